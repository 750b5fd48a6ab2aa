"""Recipes: every shipped one validates; bad files report every problem at once; the precedence rule."""

import pytest

from edgepack.errors import RecipeError
from edgepack.recipes import Recipe, available, load_recipe

SHIPPED = ["fp16", "fp32", "int4-block128", "int4-block32", "int8-weight"]


def test_required_recipes_ship():
    assert set(SHIPPED) <= set(available())


@pytest.mark.parametrize("name", available())
def test_every_shipped_recipe_validates(name):
    recipe = load_recipe(name)
    assert recipe.name == name
    assert any(v is not None for v in recipe.parity.model_dump().values()), "each recipe carries parity thresholds"


def test_int4_block32_is_what_the_issue_asks():
    r = load_recipe("int4-block32")
    w = r.for_module("model.layers.0.mlp.down_proj")
    assert (w.bits, w.group_size, w.symmetric, w.activations) == (4, 32, False, "int8_dynamic")
    assert r.method.name == "gptq" and r.method.act_order and r.method.clip_search
    assert r.for_module("model.embed_tokens").bits == 8
    fast = load_recipe("int4-block32-rtn")
    assert fast.method.name == "rtn" and fast.rules == r.rules and fast.codes_digest() != r.codes_digest()
    sym = r.symmetric_variant()
    assert sym.for_module("model.layers.0.mlp.down_proj").symmetric and sym.method == r.method
    assert load_recipe("int4-block128").for_module("model.layers.3.self_attn.q_proj").group_size == 128


def _recipe(**kw):
    base = {"name": "t", "rules": [], "parity": {}}
    return Recipe.model_validate({**base, **kw})


INT4 = {"bits": 4, "group_size": 32}
INT8 = {"bits": 8}


@pytest.mark.parametrize(
    "case, module, expected_bits",
    [
        ("first matching rule wins", "model.layers.0.self_attn.q_proj", 8),
        ("later rule applies when earlier ones miss", "model.layers.0.mlp.up_proj", 4),
        ("no rule matches: keeps the recipe dtype", "model.norm", None),
        ("embedding section beats a catch-all rule", "model.embed_tokens", 16),
        ("lm_head section beats a catch-all rule", "lm_head", None),
    ],
)
def test_precedence(case, module, expected_bits):
    recipe = _recipe(
        rules=[
            {"match": "*.self_attn.*", "weights": INT8},
            {"match": "model.layers.*", "weights": INT4},
        ],
        embedding={"bits": 16},
        lm_head=None,
    )
    got = recipe.for_module(module)
    assert (got.bits if got else None) == expected_bits, case


def test_misspelled_and_invalid_keys_are_all_reported(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "name: bad\nrulez: []\nrules:\n  - match: '*'\n    weights: {bits: 3, group_size: 30}\n"
        "embedding: {bitz: 8}\nparity: {min_top: 0.5}\n"
    )
    with pytest.raises(RecipeError) as info:
        load_recipe(bad)
    msg = str(info.value)
    assert str(bad) in msg
    assert "rulez: unknown key; allowed keys: description, dtype, embedding, lm_head, method, name, parity, rules" in msg
    assert "rules.0.weights.bits" in msg and "4, 8, 16 or 32" in msg
    assert "embedding.bitz: unknown key; allowed keys: activations, bits, format, group_size, symmetric" in msg
    assert "parity.min_top: unknown key" in msg
    assert len(info.value.problems) >= 5


def test_group_size_must_be_a_power_of_two(tmp_path):
    with pytest.raises(Exception, match="power of two"):
        _recipe(rules=[{"match": "*", "weights": {"bits": 4, "group_size": 48}}])


def test_unknown_recipe_lists_the_shipped_ones():
    with pytest.raises(RecipeError, match="unknown recipe; shipped recipes: fp16, fp32"):
        load_recipe("int3-magic")
