import subprocess
import sys

import pytest

import clothsim


def test_public_names_resolve():
    for name in clothsim.__all__:
        assert getattr(clothsim, name) is not None
    assert clothsim.SimilarityIndex.__module__ == "clothsim.similarity_index"


def test_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'Katalog'"):
        clothsim.Katalog  # noqa: B018


def test_import_does_not_load_torch():
    code = "import sys, clothsim; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
