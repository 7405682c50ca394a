import os

from mftd.token import load_or_create_token


def test_created_private_then_read_back(tmp_path):
    path = tmp_path / "data" / "token"
    token = load_or_create_token(path)
    assert len(token) >= 32
    assert path.stat().st_mode & 0o777 == 0o600
    assert load_or_create_token(path) == token
    assert [entry.name for entry in path.parent.iterdir()] == ["token"]  # no temp file left behind


def test_loose_permissions_are_narrowed(tmp_path):
    path = tmp_path / "token"
    path.write_text("secret-token\n")
    os.chmod(path, 0o644)
    assert load_or_create_token(path) == "secret-token"
    assert path.stat().st_mode & 0o777 == 0o600


def test_empty_file_gets_a_new_token(tmp_path):
    path = tmp_path / "token"
    path.write_text("")
    token = load_or_create_token(path)
    assert token and path.read_text().strip() == token
