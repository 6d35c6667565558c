import pytest

from hpcserve_jupyter.durations import format_duration, parse_duration, parse_size_mb


@pytest.mark.parametrize("text,seconds", [
    ("90", 90), ("90s", 90), ("30m", 1800), ("2h", 7200), ("1d", 86400), ("1.5h", 5400),
    ("1:30:00", 5400), ("10:00", 600), ("1-02:00:00", 93600), (5400, 5400),
])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["banana", "", "-1h", "0", "1:xx", "1-", True, 0, -5])
def test_parse_duration_rejects(bad):
    with pytest.raises(ValueError):
        parse_duration(bad)


def test_format_duration_is_slurm_style():
    assert format_duration(5400) == "01:30:00"
    assert format_duration(93600) == "1-02:00:00"


@pytest.mark.parametrize("text,mb", [("16G", 16384), ("512M", 512), ("16GiB", 16384),
                                     ("1T", 1048576), (2048, 2048), ("1024k", 1)])
def test_parse_size(text, mb):
    assert parse_size_mb(text) == mb


@pytest.mark.parametrize("bad", ["lots", "0G", "-5G", True])
def test_parse_size_rejects(bad):
    with pytest.raises(ValueError):
        parse_size_mb(bad)


@pytest.mark.parametrize("bad", ["9" * 400 + "s", "1" + "0" * 310 + "d", float("inf"),
                                 float("nan")])
def test_durations_beyond_a_float_are_a_value_error(bad):
    """Digit strings past 1e308 become float('inf'): a ValueError, not an OverflowError."""
    with pytest.raises(ValueError, match="duration"):
        parse_duration(bad)


def test_sizes_beyond_a_float_are_a_value_error():
    with pytest.raises(ValueError, match="too large a size"):
        parse_size_mb("9" * 400 + "G")
