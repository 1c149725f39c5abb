import pytest

from alive_models.testing import save_tiny_text_models


@pytest.fixture(scope="session")
def tiny_text(tmp_path_factory):
    """(t5_dir, qwen_dir): tiny random caption encoders in Hugging Face format, built once."""
    return save_tiny_text_models(tmp_path_factory.mktemp("text"))
