"""The command line, end to end, in-process."""

import pytest

from fcnkit.cli import main


def test_models_lists_param_counts(capsys):
    assert main(["models", "*vgg16", "--params"]) == 0
    out = capsys.readouterr().out
    assert "fcn32s_vgg16" in out and "136,152,917" in out and "134,815,994" in out
    assert out.count("134,489,759") == 2  # FCN-8s and at-once


def test_forward_prints_output_shape(capsys):
    assert main(["forward", "fcn_resnet18_d16", "--size", "33x47", "--num-classes", "4"]) == 0
    assert "out: (1, 4, 33, 47)" in capsys.readouterr().out


def test_typo_gets_suggestion_and_exit_code_2(capsys):
    assert main(["forward", "fcn8s_vgg61"]) == 2
    assert "Did you mean: fcn8s_vgg16" in capsys.readouterr().err


def test_bad_size_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        main(["forward", "fcn8s_vgg16", "--size", "big"])
    assert info.value.code == 2
    assert "HxW" in capsys.readouterr().err
