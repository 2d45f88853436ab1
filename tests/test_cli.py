"""`python -m engine`: help, the method list, a diffusion generate with the embedded weights, clear errors."""
import json

import pytest

from engine import cli


def test_generate_help_lists_the_method_options(capsys):
    # method help strings contain '%' (argparse %-formats help text): --help must still print
    with pytest.raises(SystemExit) as e:
        cli.main(["generate", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for opt in ("--rule", "--threshold", "--gen-length", "--block-length", "--adapter"):
        assert opt in out, opt
    assert "embedded-fast" in out


def test_methods_lists_diffusion(capsys):
    assert cli.main(["methods"]) == 0
    out = capsys.readouterr().out
    assert "diffusion  [" in out and "--rule" in out


@pytest.mark.slow
def test_diffusion_generate_prints_text_and_counters(capsys, one_thread):
    rc = cli.main(["generate", "--method", "diffusion", "--prompt", "Name a colour.", "--rule", "threshold",
                   "--threshold", "0.7", "--gen-length", "8", "--block-length", "8", "--adapter", "embedded-fast",
                   "--device", "cpu", "--json"])
    assert rc == 0
    res = json.loads(capsys.readouterr().out)
    c = res["counters"]
    assert res["text"].strip()
    assert c["model"].startswith("smol-diffusion-fast")
    assert 1 <= c["steps"] <= 8  # a threshold rule commits >= 1 token per step


def test_option_of_another_method_is_a_clear_error(capsys):
    rc = cli.main(["generate", "--method", "ar", "--prompt", "hi", "--threshold", "0.5"])
    assert rc == 2
    assert "--threshold" in capsys.readouterr().err
