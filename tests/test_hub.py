"""fcnkit.hub (cache, checksums, offline mode, safe loading) and fcnkit.models.weights.resolve.

Everything goes through ``file://`` URLs in a temporary directory: no test touches the network.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pickle

import pytest
import torch

from fcnkit import hub
from fcnkit.errors import CheckpointError
from fcnkit.hub import ChecksumError, OfflineError, cache_dir, download, load_file, verify_file
from fcnkit.models import weights
from fcnkit.models.weights import BACKBONE_WEIGHTS, MODEL_WEIGHTS, VOC_CLASSES, resolve
from fcnkit.preprocessing import CAFFE_BGR

# --------------------------------------------------------------------------------------------- helpers


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Every test gets its own empty cache and starts online, whatever the caller's environment says."""
    monkeypatch.setenv("FCNKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("FCNKIT_OFFLINE", raising=False)


def _state_dict() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "conv1_1.weight": torch.randn(4, 3, 3, 3, generator=g),
        "conv1_1.bias": torch.randn(4, generator=g),
    }


def _write_weights(path, obj=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(_state_dict() if obj is None else obj, path)
    return path


def _sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _md5(path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _files_under(root) -> list:
    """Every file (hidden ones included) below ``root``; [] if it does not exist."""
    return sorted(p for p in root.rglob("*") if not p.is_dir()) if root.exists() else []


def _assert_same_state_dict(a, b):
    assert set(a) == set(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.fixture
def source(tmp_path):
    """A small torch.save'd state dict outside the cache, with its independently computed digests."""
    return _write_weights(tmp_path / "src" / "tiny.pth")


# ------------------------------------------------------------------------------------ 1. download


def test_cache_dir_follows_env(tmp_path):
    assert cache_dir() == tmp_path / "cache" / "weights"


@pytest.mark.parametrize("kind", ["sha256_full", "sha256_prefix8", "sha256_prefix12_upper", "md5"])
def test_download_file_url_into_cache(source, kind):
    sha, md5 = _sha256(source), _md5(source)
    checksum = {
        "sha256_full": f"sha256:{sha}",
        "sha256_prefix8": f"sha256:{sha[:8]}",
        "sha256_prefix12_upper": f"SHA256:{sha[:12].upper()}",
        "md5": f"md5:{md5}",
    }[kind]
    got = download(source.as_uri(), checksum, "tiny.pth")
    assert got == cache_dir() / "tiny.pth"
    assert got.read_bytes() == source.read_bytes()
    assert _sha256(got) == sha
    # Only the destination is left: no temporary .part file next to it.
    assert _files_under(cache_dir()) == [got]
    _assert_same_state_dict(load_file(got), _state_dict())


def test_download_name_defaults_to_url_basename(source):
    got = download(source.as_uri(), f"sha256:{_sha256(source)}")
    assert got == cache_dir() / "tiny.pth"


def test_download_reports_progress(source):
    calls = []
    download(source.as_uri(), f"sha256:{_sha256(source)}", "tiny.pth", progress=lambda d, t: calls.append((d, t)))
    size = source.stat().st_size
    assert calls, "progress was never called"
    assert calls[-1][0] == size
    assert all(t in (None, size) for _, t in calls)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)


def test_second_download_uses_cache_without_reading_url(source):
    checksum = f"sha256:{_sha256(source)}"
    first = download(source.as_uri(), checksum, "tiny.pth")
    expected = first.read_bytes()
    source.unlink()  # the URL now points at nothing: a second fetch would fail
    second = download(source.as_uri(), checksum, "tiny.pth")
    assert second == first
    assert second.read_bytes() == expected


# ------------------------------------------------------------------------ 2. checksum mismatch


@pytest.mark.parametrize("kind", ["sha256_full", "sha256_prefix", "md5"])
def test_download_checksum_mismatch_leaves_nothing(source, kind):
    wrong_sha = hashlib.sha256(b"not the file").hexdigest()
    wrong_md5 = hashlib.md5(b"not the file").hexdigest()
    assert not _sha256(source).startswith(wrong_sha[:8])
    checksum = {
        "sha256_full": f"sha256:{wrong_sha}",
        "sha256_prefix": f"sha256:{wrong_sha[:8]}",
        "md5": f"md5:{wrong_md5}",
    }[kind]
    with pytest.raises(ChecksumError):
        download(source.as_uri(), checksum, "tiny.pth")
    assert not (cache_dir() / "tiny.pth").exists()
    assert _files_under(cache_dir().parent) == []  # no destination, no .part, nothing anywhere in the cache
    assert source.exists()  # the source itself is untouched


def test_interrupted_download_leaves_nothing(source):
    def boom(done, total):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        download(source.as_uri(), f"sha256:{_sha256(source)}", "tiny.pth", progress=boom)
    assert _files_under(cache_dir().parent) == []


def test_checksum_error_is_runtime_error():
    assert issubclass(ChecksumError, RuntimeError)
    assert issubclass(OfflineError, RuntimeError)


# ------------------------------------------------------------------------- 3. corrupted cache


def test_corrupted_cached_file_raises(source):
    checksum = f"sha256:{_sha256(source)}"
    dest = download(source.as_uri(), checksum, "tiny.pth")
    data = bytearray(dest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    dest.write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match=r"tiny\.pth"):
        download(source.as_uri(), checksum, "tiny.pth")
    with pytest.raises(ChecksumError):
        verify_file(dest, checksum)


def test_corrupted_cached_file_raises_offline(source, monkeypatch):
    checksum = f"md5:{_md5(source)}"
    dest = download(source.as_uri(), checksum, "tiny.pth")
    dest.write_bytes(dest.read_bytes() + b"\0")
    monkeypatch.setenv("FCNKIT_OFFLINE", "1")
    with pytest.raises(ChecksumError):
        download(source.as_uri(), checksum, "tiny.pth")


def test_verify_file_accepts_good_digests(source):
    verify_file(source, f"sha256:{_sha256(source)}")
    verify_file(source, f"sha256:{_sha256(source)[:8]}")
    verify_file(source, f"md5:{_md5(source)}")
    assert hub.file_digest(source) == _sha256(source)
    assert hub.file_digest(source, "md5") == _md5(source)


# ---------------------------------------------------------------------------------- 4. offline


@pytest.mark.parametrize("value", ["1", "true", "yes", "TRUE "])
def test_offline_missing_file_raises_naming_url_and_path(source, monkeypatch, value):
    monkeypatch.setenv("FCNKIT_OFFLINE", value)
    assert hub.is_offline()
    url = source.as_uri()
    with pytest.raises(OfflineError) as excinfo:
        download(url, f"sha256:{_sha256(source)}", "tiny.pth")
    msg = str(excinfo.value)
    assert url in msg
    assert str(cache_dir() / "tiny.pth") in msg
    assert _files_under(cache_dir().parent) == []  # nothing fetched, nothing created


def test_offline_does_not_read_url(tmp_path, monkeypatch):
    """A URL that could not be read at all still gives OfflineError, not a URL error."""
    monkeypatch.setenv("FCNKIT_OFFLINE", "1")
    url = (tmp_path / "nowhere" / "missing.pth").as_uri()
    with pytest.raises(OfflineError, match=r"missing\.pth"):
        download(url, "sha256:" + "0" * 64)


def test_offline_returns_cached_file(source, monkeypatch):
    checksum = f"sha256:{_sha256(source)}"
    online = download(source.as_uri(), checksum, "tiny.pth")
    monkeypatch.setenv("FCNKIT_OFFLINE", "1")
    source.unlink()
    assert download(source.as_uri(), checksum, "tiny.pth") == online


@pytest.mark.parametrize("value", ["0", "", "false", "no", " 0 "])
def test_offline_zero_means_online(source, monkeypatch, value):
    monkeypatch.setenv("FCNKIT_OFFLINE", value)
    assert not hub.is_offline()
    got = download(source.as_uri(), f"sha256:{_sha256(source)}", "tiny.pth")
    assert got.read_bytes() == source.read_bytes()


# ---------------------------------------------------------------------- 5. malformed checksums


MALFORMED = [
    "sha1:" + hashlib.sha1(b"x").hexdigest(),
    "sha256:abc",
    "sha256:abcdef1",  # 7 digits: one short of the minimum prefix
    "sha256:",
    "md5:short",
    "md5:" + "0" * 31,
    "md5:" + "0" * 33,
    hashlib.sha256(b"x").hexdigest(),  # no colon
    "",
]


@pytest.mark.parametrize("checksum", MALFORMED)
def test_malformed_checksum_raises_value_error(source, checksum):
    with pytest.raises(ValueError):
        verify_file(source, checksum)
    with pytest.raises(ValueError):
        download(source.as_uri(), checksum, "tiny.pth")
    assert _files_under(cache_dir().parent) == []


@pytest.mark.parametrize("checksum", MALFORMED[:3])
def test_malformed_checksum_checked_before_offline(source, monkeypatch, checksum):
    monkeypatch.setenv("FCNKIT_OFFLINE", "1")
    with pytest.raises(ValueError):
        download(source.as_uri(), checksum, "tiny.pth")


def test_declared_checksums_are_well_formed():
    names = []
    for table in (MODEL_WEIGHTS, BACKBONE_WEIGHTS):
        for tags in table.values():
            for entry in tags.values():
                algo, digest = hub._parse_checksum(entry.checksum)
                assert all(c in "0123456789abcdef" for c in digest), entry.checksum
                if entry.source == "torchvision":  # <name>-<sha256 prefix>.pth
                    assert algo == "sha256"
                    assert entry.local_name.rsplit("-", 1)[1] == f"{digest}.pth"
                names.append(entry.local_name)
    # resolve() matches a path to an entry by file name: that must be unambiguous.
    assert len(names) == len(set(names))


# ------------------------------------------------------------------------------- 6. load_file

PAYLOAD_RAN = {"count": 0}


def _payload(marker: str) -> str:
    PAYLOAD_RAN["count"] += 1
    return marker


class _Evil:
    """Unpickling calls ``_payload``: a stand-in for arbitrary code in a malicious checkpoint."""

    def __reduce__(self):
        return (_payload, ("pwned",))


class _EvilSystem:
    def __init__(self, marker_path: str):
        self.marker_path = marker_path

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker_path}'",))


def test_load_file_refuses_code_executing_pickle(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"weight": torch.zeros(2), "extra": _Evil()}, path)
    PAYLOAD_RAN["count"] = 0
    with pytest.raises(CheckpointError, match=r"refused to load .*evil\.pth: it holds pickled code objects"):
        load_file(path)
    assert PAYLOAD_RAN["count"] == 0
    # The payload is live: a plain unpickler does run it (so the check above is meaningful).
    torch.load(path, weights_only=False)
    assert PAYLOAD_RAN["count"] == 1
    PAYLOAD_RAN["count"] = 0


def test_load_file_refuses_os_system_pickle(tmp_path):
    marker = tmp_path / "payload_ran"
    path = tmp_path / "evil_system.pth"
    torch.save(_EvilSystem(str(marker)), path)
    assert b"system" in path.read_bytes()
    with pytest.raises(CheckpointError, match=r"pickled code objects \((posix|nt)\.system\)"):
        load_file(path)
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["truncated", "empty", "text"])
def test_load_file_names_a_damaged_or_foreign_file(tmp_path, damage):
    path = tmp_path / "model.pth"
    torch.save({"weight": torch.arange(1000.0)}, path)
    data = path.read_bytes()
    path.write_bytes({"truncated": data[: len(data) // 2], "empty": b"", "text": b"hello, not a checkpoint"}[damage])
    with pytest.raises(CheckpointError, match=r"model\.pth is (truncated or )?not a PyTorch file"):
        load_file(path)


def test_load_file_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_file(tmp_path / "absent.pth")


def test_load_file_refuses_raw_pickle(tmp_path):
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(_Evil(), protocol=2))
    PAYLOAD_RAN["count"] = 0
    with pytest.raises(CheckpointError, match="pickled code objects"):
        load_file(path)
    assert PAYLOAD_RAN["count"] == 0


def test_load_file_plain_state_dict(tmp_path):
    path = _write_weights(tmp_path / "plain.pth")
    loaded = load_file(path)
    _assert_same_state_dict(loaded, _state_dict())
    assert all(v.device.type == "cpu" for v in loaded.values())


def test_load_file_missing_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_file(tmp_path / "missing.pth")


# ------------------------------------------------------------------------- 7. weights.resolve


def test_resolve_raw_state_dict(tmp_path):
    path = _write_weights(tmp_path / "mine.pth")
    r = resolve(path, owner="fcn8s_vgg16")
    _assert_same_state_dict(r.state_dict, _state_dict())
    assert r.preprocessing is None and r.classes is None and r.layout is None
    assert r.source == str(path)
    # Also as a string, and with a name that has no weights-like suffix but contains a separator.
    _assert_same_state_dict(resolve(str(path), owner="fcn8s_vgg16").state_dict, _state_dict())
    other = _write_weights(tmp_path / "weights_file")
    _assert_same_state_dict(resolve(str(other), owner="fcn8s_vgg16").state_dict, _state_dict())


@pytest.mark.parametrize("key", ["model_state_dict", "state_dict", "model"])
def test_resolve_wrapped_state_dict(tmp_path, key):
    wrapped = {"epoch": 3, "iteration": 1000, "optim_state_dict": {"state": {}}, key: _state_dict()}
    path = _write_weights(tmp_path / "checkpoint.pth.tar", wrapped)
    r = resolve(path, owner="fcn8s_vgg16")
    _assert_same_state_dict(r.state_dict, _state_dict())


def test_resolve_declared_file_name_keeps_metadata(tmp_path):
    entry = MODEL_WEIGHTS["fcn8s_vgg16"]["voc_caffe"]
    assert entry.local_name == "fcn8s_from_caffe.pth"
    path = _write_weights(tmp_path / "downloaded_by_hand" / "fcn8s_from_caffe.pth", {"model_state_dict": _state_dict()})
    r = resolve(path, owner="fcn8s_vgg16")
    assert r.preprocessing == CAFFE_BGR
    assert r.classes == VOC_CLASSES
    assert r.layout == "torchfcn"
    _assert_same_state_dict(r.state_dict, _state_dict())


def test_resolve_not_a_state_dict(tmp_path):
    path = _write_weights(tmp_path / "list.pth", [torch.zeros(1)])
    with pytest.raises(ValueError, match="state dict"):
        resolve(path, owner="fcn8s_vgg16")


def test_resolve_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError):
        resolve(tmp_path / "missing.pth", owner="fcn8s_vgg16")
    with pytest.raises(FileNotFoundError):
        resolve(str(tmp_path / "missing.pth"), owner="fcn8s_vgg16")


def test_resolve_unknown_tag_suggests(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # so that no stray file named like the tag can exist
    with pytest.raises(KeyError) as excinfo:
        resolve("voc_cafe", owner="fcn8s_vgg16")
    assert "voc_caffe" in str(excinfo.value)
    with pytest.raises(KeyError, match="no_such_model"):
        resolve("voc_caffe", owner="no_such_model")


def test_resolve_declared_tag_offline_does_not_fetch(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FCNKIT_OFFLINE", "1")
    with pytest.raises(OfflineError) as excinfo:
        resolve("voc_caffe", owner="fcn8s_vgg16")
    assert str(cache_dir() / "fcn8s_from_caffe.pth") in str(excinfo.value)
    with pytest.raises(OfflineError):
        resolve("fcn8s_vgg16.voc_caffe", owner="ignored")


# ------------------------------------------------------------------------ 8. WeightsEntry.fetch


def test_entry_fetch_file_url(tmp_path):
    src = _write_weights(tmp_path / "mirror" / "fcn8s_mirror.pth")
    real = MODEL_WEIGHTS["fcn8s_vgg16"]["voc_caffe"]
    entry = dataclasses.replace(real, url=src.as_uri(), checksum=f"sha256:{_sha256(src)}")
    got = entry.fetch()
    assert got == cache_dir() / real.file_name  # the declared local name wins over the URL's
    assert got.read_bytes() == src.read_bytes()

    unnamed = dataclasses.replace(entry, file_name=None)
    assert unnamed.local_name == "fcn8s_mirror.pth"
    assert unnamed.fetch() == cache_dir() / "fcn8s_mirror.pth"


def test_entry_fetch_wrong_checksum(tmp_path):
    src = _write_weights(tmp_path / "mirror" / "x.pth")
    real = BACKBONE_WEIGHTS["vgg16"]["imagenet"]
    entry = dataclasses.replace(real, url=src.as_uri(), checksum="md5:" + hashlib.md5(b"other").hexdigest())
    with pytest.raises(ChecksumError):
        entry.fetch()
    assert _files_under(cache_dir().parent) == []


def test_resolve_declared_tag_through_fetch(tmp_path, monkeypatch):
    """A declared tag resolves through fetch() + load_file(), keeping the entry's metadata."""
    src = _write_weights(tmp_path / "mirror" / "fcn8s.pth", {"model_state_dict": _state_dict()})
    real = MODEL_WEIGHTS["fcn8s_vgg16"]["voc_caffe"]
    entry = dataclasses.replace(real, url=src.as_uri(), checksum=f"sha256:{_sha256(src)}")
    monkeypatch.setitem(weights.MODEL_WEIGHTS, "fcn8s_vgg16", {"voc_caffe": entry})
    monkeypatch.chdir(tmp_path)
    r = resolve("voc_caffe", owner="fcn8s_vgg16")
    _assert_same_state_dict(r.state_dict, _state_dict())
    assert r.preprocessing == CAFFE_BGR and r.classes == VOC_CLASSES and r.layout == "torchfcn"
    assert r.source == src.as_uri()
    assert (cache_dir() / "fcn8s_from_caffe.pth").exists()
