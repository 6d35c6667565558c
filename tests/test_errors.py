from hpcserve_jupyter.errors import shown


def test_shown_cuts_long_values_and_survives_deep_ones():
    assert shown("abc") == "'abc'"
    assert shown("x" * 100, 40) == "'" + "x" * 36 + "..."
    assert len(shown("x" * 100, 40)) == 40
    deep: list = []
    for _ in range(100000):
        deep = [deep]
    assert shown(deep) == "<a list nested too deeply>"
