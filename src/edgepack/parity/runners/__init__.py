"""One parity runner per runtime; each module registers itself in ``edgepack.parity.RUNNERS``."""
