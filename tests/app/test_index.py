import json

import pytest
import torch
from PIL import Image

from dlgpr.app.index import GalleryIndex, IndexMismatchError, retriever_fingerprint
from dlgpr.data.reader import iter_records
from dlgpr.data.shards import read_manifest
from dlgpr.retrieval import encode_gallery, load_retriever
from dlgpr.search import topk_search
from tests.helpers.cmpl import tiny_checkpoint, tiny_module
from tests.helpers.scripts import load_script
from tests.helpers.shards import make_tiny_dataset


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("index")
    make_tiny_dataset(tmp / "data")
    tiny_checkpoint(tmp / "tiny.ckpt")
    script = load_script("index_gallery")
    script.index_gallery(ckpt=str(tmp / "tiny.ckpt"), out=str(tmp / "index"), data_dir=str(tmp / "data"), split="test", faiss="flat")
    return tmp


def test_round_trip_matches_the_encoded_split(built):
    module = load_retriever(built / "tiny.ckpt")
    index = GalleryIndex.load(built / "index", fingerprint=retriever_fingerprint(module))
    reference = encode_gallery(module, built / "data", "test")
    assert index.keys == reference.keys and len(index) == 16
    assert torch.allclose(index.embeddings, reference.embeddings, atol=1e-6)
    assert torch.equal(index.place_ids, reference.place_ids)
    records = {r.key: r for s in read_manifest(built / "data").split_shards("test") for r in iter_records(built / "data" / s.path)}
    for i, key in enumerate(index.keys):
        assert index.coordinates(i) == pytest.approx((records[key].lat, records[key].lon))
        assert index.descriptions[i] == records[key].description and index.attributes[i] == records[key].attributes
        # thumbnails are files next to the index, readable as images, whatever the working directory
        assert index.images[i].startswith(str((built / "index" / "thumbs").resolve()))
        assert Image.open(index.images[i]).size == (32, 32)
    meta = json.loads((built / "index" / "index.json").read_text())["meta"]
    assert meta["split"] == "test" and meta["checkpoint"].endswith("tiny.ckpt") and meta["faiss"]["kind"] == "flat"
    # the gallery the dialogue code searches, with its image loader
    gallery = index.gallery()
    assert gallery.keys == index.keys and gallery.image_fn(3).size == (32, 32)


def test_faiss_file_answers_like_the_exact_search(built):
    index = GalleryIndex.load(built / "index")
    q = index.embeddings[:5] + 0.01 * torch.randn(5, index.embeddings.shape[1], generator=torch.Generator().manual_seed(0))
    s_f, i_f = index.search(q, 4)
    s_t, i_t = topk_search(q, index.embeddings, 4, backend="torch")
    assert torch.allclose(s_f, s_t, atol=1e-5)
    # the untrained tiny retriever embeds look-alike images alike: compare the rows' scores, not the tied rows
    assert torch.allclose((q @ index.embeddings.T).gather(1, i_f), s_t, atol=1e-5)
    exact = GalleryIndex.load(built / "index", with_faiss=False)
    assert exact.faiss_index is None and torch.equal(exact.search(q, 4)[1], i_t)


def test_ivf_index_is_written_and_searched(built, tmp_path):
    index = GalleryIndex.load(built / "index", with_faiss=False)
    index.save(tmp_path / "ivf", faiss="ivf", nlist=2, nprobe=2)
    back = GalleryIndex.load(tmp_path / "ivf")
    assert back.meta["faiss"] == {"kind": "ivf", "nlist": 2, "nprobe": 2} and back.faiss_index.nprobe == 2
    scores, rows = back.search(back.embeddings[:3], 1)
    # every cell probed: each image finds itself (or an image embedded exactly like it)
    assert scores[:, 0].tolist() == pytest.approx([1.0] * 3, abs=1e-5)
    assert torch.allclose(back.embeddings[rows[:, 0]], back.embeddings[:3], atol=1e-5)
    # saving without faiss removes a stale faiss file
    back.save(tmp_path / "ivf")
    assert not (tmp_path / "ivf" / "faiss.index").exists() and GalleryIndex.load(tmp_path / "ivf").faiss_index is None


def test_an_index_of_another_retriever_is_refused_in_one_line(built):
    other = tiny_module()
    with torch.no_grad():
        next(other.parameters()).add_(0.01)
    with pytest.raises(IndexMismatchError) as err:
        GalleryIndex.load(built / "index", fingerprint=retriever_fingerprint(other))
    msg = str(err.value)
    assert "\n" not in msg and str(built / "index" / "index.json") in msg and "another retriever" in msg
    # the same weights loaded anew match
    GalleryIndex.load(built / "index", fingerprint=retriever_fingerprint(tiny_module()))


def test_a_folder_that_is_not_an_index_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="index.json"):
        GalleryIndex.load(tmp_path)
    (tmp_path / "index.json").write_text(json.dumps({"meta": {"format": "something-else", "version": 1}}))
    with pytest.raises(IndexMismatchError, match="something-else"):
        GalleryIndex.load(tmp_path)


def test_python_m_dlgpr_index_is_the_script(built, tmp_path):
    from dlgpr.cli import main

    assert main(["index", "--ckpt", str(built / "tiny.ckpt"), "--out", str(tmp_path / "via_cli"), "--data_dir", str(built / "data"),
                 "--thumbnails", "false"]) is None
    ours, script = GalleryIndex.load(tmp_path / "via_cli"), GalleryIndex.load(built / "index")
    assert ours.keys == script.keys and torch.equal(ours.embeddings, script.embeddings)
    assert ours.meta["retriever_fingerprint"] == script.meta["retriever_fingerprint"] and "#" in ours.images[0]
