"""The open_clip: family and what its text tower gives: a torch-free tokenizer that is open_clip's, text
and image vectors in one space on ONNX Runtime, search by text (API, CLI, REST, without torch), the
refusal on image-only indexes, and labels from a list."""

from __future__ import annotations

import json
import random
import shutil
import warnings

import numpy as np
import pytest
import torch

pytest.importorskip("open_clip", reason="the hub extra (open_clip) is not installed")

from _hub_models import register_tiny_clip  # noqa: E402
from _no_torch import SRC, no_torch  # noqa: E402

from clothsim.cli.main import main  # noqa: E402
from clothsim.encoders.factory import build_network, create_encoder  # noqa: E402
from clothsim.encoders.hub_files import manual_path  # noqa: E402
from clothsim.encoders.text_tokenizer import TextTokenizer  # noqa: E402
from clothsim.errors import UnknownEncoderError, UsageError, WeightsUnavailableError  # noqa: E402
from clothsim.similarity_index import SimilarityIndex  # noqa: E402

SAMPLE = SRC / "clothsim" / "assets" / "clothing_sample"
CATEGORIES = ("dress", "shoes", "hat")
WORDS = ("red", "Floral", "summer", "DRESS", "t-shirt", "jeans'", "it's", "don't", "café", "naïve", "🙂", "👗",
         "&amp;", "&lt;b&gt;", "“quoted”", "‘single’", "50%", "$19.99", "x2", "snake_case", "日本", "платье",
         "e\u0301", "ﬁne", "ＦＵＬＬ", "...", "!?", "\t", "  ", "-<end_of_text>-", "a-line", "o'neil", "3/4")


@pytest.fixture(scope="module")
def clip_name() -> str:
    return f"open_clip:{register_tiny_clip()}"


@pytest.fixture(scope="module")
def clip(clip_name):
    return build_network(clip_name, weights="random")


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory):
    """Real photos: a folder per category, and the same photos flat (no categories)."""
    root = tmp_path_factory.mktemp("catalogue")
    for category in CATEGORIES:
        (root / "labelled" / category).mkdir(parents=True)
        for photo in sorted((SAMPLE / "train" / category).glob("*.jpg"))[:5]:
            shutil.copy(photo, root / "labelled" / category / photo.name)
            (root / "flat").mkdir(exist_ok=True)
            shutil.copy(photo, root / "flat" / f"{category}-{photo.name}")
    return root


@pytest.fixture(scope="module")
def clip_index(clip_name, catalogue, tmp_path_factory):
    folder = tmp_path_factory.mktemp("clip") / "idx"
    assert main(["-q", "index", str(catalogue / "labelled"), "--out", str(folder), "--encoder", clip_name,
                 "--weights", "random"]) == 0
    return folder


# ----- the tokenizer -----------------------------------------------------------------------------------------
def _strings(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(0, 14))]
        out.append(rng.choice([" ", "", "  ", "-"]).join(words))
    return out


def test_the_torch_free_tokenizer_gives_open_clips_ids(clip):
    spec = clip.spec
    tokenizer_file = spec.file("tokenizer")
    ours = TextTokenizer.from_settings(tokenizer_file.file, spec.text)
    texts = _strings(400) + ["a " * 40, "", "RED Dress"]
    expected = clip.tokenize(texts).numpy()
    assert np.array_equal(ours(texts), expected)
    assert ours(texts).shape == (len(texts), 16)  # padded and truncated to the model's context
    # The one known difference: a start/end marker typed as a word of its own is read as its characters.
    marker = ours(["<end_of_text>"])[0]
    assert marker[0] == 49406 and 49407 not in marker[1:-1].tolist()[:1] and marker.tolist().count(49407) == 1


def test_the_full_context_tokenizer_matches_on_long_texts():
    import open_clip

    from clothsim.runtimes.text_export import _tokenizer_json

    reference = open_clip.get_tokenizer("ViT-B-32")  # CLIP's 77-token BPE tokenizer; no weights needed
    text, settings = _tokenizer_json(reference, 77)
    path = SRC.parent / ".pytest-tokenizer.json"
    try:
        path.write_text(text)
        texts = _strings(300, seed=1) + [" ".join(WORDS * 3)]
        assert np.array_equal(TextTokenizer.from_settings(path, settings)(texts), reference(texts).numpy())
    finally:
        path.unlink(missing_ok=True)


# ----- one space, on ONNX Runtime ----------------------------------------------------------------------------
def test_text_and_image_towers_on_onnx_runtime_are_torchs(clip, clip_name):
    from clothsim.images import load_image
    from clothsim.runtimes.onnx_text import OnnxTextEncoder

    onnx = create_encoder(clip_name, weights="random", runtime="onnx")
    assert onnx.runtime == "onnx" and onnx.spec.has_text_tower
    photos = [load_image(str(p)) for p in sorted((SAMPLE / "test" / "dress").glob("*.jpg"))[:3]]
    images_torch, images_onnx = clip.encode_images(photos), onnx.encode_images(photos)
    texts = ["a red dress", "white sneakers", "a straw hat"]
    text_torch, text_onnx = clip.encode_text(texts), OnnxTextEncoder(onnx.spec).encode(texts)
    assert np.sum(images_torch * images_onnx, axis=1).min() >= 0.9999
    assert np.sum(text_torch * text_onnx, axis=1).min() >= 0.9999
    # The shared space, as torch computes it: cosines of images and texts from the model's own towers.
    batch = torch.from_numpy(np.stack([clip.transform(p) for p in photos]))
    with torch.no_grad():
        image = torch.nn.functional.normalize(clip.model.encode_image(batch), dim=-1)
        text = torch.nn.functional.normalize(clip.model.encode_text(clip.tokenize(texts)), dim=-1)
    assert np.abs(images_onnx @ text_onnx.T - (image @ text.T).numpy()).max() < 1e-3


def test_a_local_checkpoint_and_the_hub_layout_placed_by_hand(clip, tmp_path):
    import open_clip
    from safetensors.torch import save_file

    model = open_clip.create_model(register_tiny_clip(), pretrained=None)
    path = tmp_path / "tiny.pt"
    torch.save(model.state_dict(), path)
    local = build_network(f"open_clip:{register_tiny_clip()}", weights=str(path))
    probe = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = torch.nn.functional.normalize(model.eval().encode_image(probe), dim=-1).numpy()
    assert np.sum(local.embed(probe) * expected, axis=1).min() >= 0.9999
    # A repository published for open_clip, placed by hand where clothsim looks offline.
    folder = manual_path("clothsim-test/tiny-clip", "open_clip_config.json").parent
    folder.mkdir(parents=True, exist_ok=True)
    from _hub_models import TINY_CLIP_CONFIG

    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CLIP_CONFIG,
                                                              "preprocess_cfg": {"resize_mode": "squash"}}))
    save_file(model.state_dict(), str(folder / "open_clip_model.safetensors"))
    try:
        hub = build_network("open_clip:hf-hub:clothsim-test/tiny-clip")
        assert hub.preprocessing.resize_mode == "squash" and np.sum(hub.embed(probe) * expected, axis=1).min() >= 0.9999
    finally:
        shutil.rmtree(folder)


def test_offline_and_naming_errors_say_what_to_do():
    with pytest.raises(WeightsUnavailableError) as caught:
        build_network("open_clip:hf-hub:Marqo/marqo-fashionSigLIP")
    message = str(caught.value)
    assert "https://huggingface.co/Marqo/marqo-fashionSigLIP/resolve/main/open_clip_config.json" in message
    assert str(manual_path("Marqo/marqo-fashionSigLIP", "open_clip_config.json")) in message
    with pytest.raises(WeightsUnavailableError, match="laion2B-s34B-b79K"):
        build_network("open_clip:ViT-B-32@laion2b_s34b_b79k")
    with pytest.raises(UnknownEncoderError, match="laion2b_s34b_b79k"):
        build_network("open_clip:ViT-B-32@no_such_tag")
    with pytest.raises(UnknownEncoderError, match="open_clip.list_pretrained"):
        build_network("open_clip:ViT-Q-99", weights="random")
    with pytest.raises(UsageError, match="needs weights"):
        build_network("open_clip:ViT-B-32")


# ----- search by text ----------------------------------------------------------------------------------------
def test_text_search_in_the_api_matches_a_naive_scan(clip_index):
    index = SimilarityIndex.open(clip_index)
    assert "text_model" in [f.role for f in index.encoder.spec.files]
    from clothsim.features.model_files import recorded_spec

    kept = recorded_spec(index.store).files  # the text tower and tokenizer, kept inside the index folder
    assert [f.role for f in kept] == ["text_model", "tokenizer"] and all((clip_index / f.file).is_file() for f in kept)
    hits = index.search_text("a red floral dress", k=4)
    query = index.embed_text(["a red floral dress"])[0]
    vectors, items = index.store.load_vectors()
    best = np.argsort(-(vectors @ query))[:4]
    assert [h.id for h in hits] == [items[i].id for i in best]
    photo = next((SAMPLE / "test" / "hat").glob("*.jpg"))
    mixed = index.query_vector("red", photo, text_weight=0.3)[0]
    expected = 0.7 * index.embed([photo])[0] + 0.3 * index.embed_text(["red"])[0]
    assert np.allclose(mixed, expected / np.linalg.norm(expected), atol=1e-6)
    assert index.search_text("red", k=3, image=photo, text_weight=0.0)[0].id == index.search(photo, k=1)[0].id
    with pytest.raises(UsageError, match="between 0 and 1"):
        index.search_text("red", image=photo, text_weight=1.5)


def test_text_search_from_the_cli(clip_index, capsys):
    assert main(["search", "--text", "red floral summer dress", "--index", str(clip_index), "-k", "3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out[0]["text"] == "red floral summer dress" and len(out[0]["results"]) == 3
    photo = next((SAMPLE / "test" / "shoes").glob("*.jpg"))
    assert main(["search", str(photo), "--text", "red", "--text-weight", "0.3", "--index", str(clip_index),
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["query"] == str(photo)
    assert main(["search", "--index", str(clip_index)]) == 2
    assert "give query photos, --text, or both" in capsys.readouterr().err


def test_an_image_only_index_refuses_text_and_names_the_encoders_that_have_it(tmp_path, catalogue, capsys):
    folder = tmp_path / "lite"
    assert main(["-q", "index", str(catalogue / "labelled"), "--out", str(folder)]) == 0
    assert main(["search", "--text", "red dress", "--index", str(folder)]) == 2
    err = capsys.readouterr().err
    assert "efficientnet_lite0, which has no text tower" in err and "open_clip:hf-hub:Marqo/marqo-fashionSigLIP" in err
    assert main(["-q", "index", str(catalogue / "flat"), "--out", str(tmp_path / "l2"), "--label-with", "a,b"]) == 2
    assert "--label-with needs a text tower" in capsys.readouterr().err
    assert not (tmp_path / "l2").exists()


def test_text_search_without_torch(clip_index):
    found = no_torch("clothsim", "search", "--text", "a red dress", "--index", str(clip_index), "-k", "2", "--json")
    assert found.returncode == 0, found.stderr
    assert len(json.loads(found.stdout)[0]["results"]) == 2
    script = clip_index.parent / "api.py"
    script.write_text(f"""
import json, sys
from clothsim import SimilarityIndex
index = SimilarityIndex.open({str(clip_index)!r})
hits = index.search_text("white shoes", k=3)
print(json.dumps({{"n": len(hits), "torch": sys.modules.get("torch") is not None,
                   "open_clip": "open_clip" in sys.modules}}))
""")
    done = no_torch(str(script))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"n": 3, "torch": False, "open_clip": False}


def test_verify_finds_a_damaged_tokenizer_file(clip_index, tmp_path):
    copy = tmp_path / "idx"
    shutil.copytree(clip_index, copy)
    spec = json.loads((copy / "manifest.json").read_text())["encoder_spec"]
    tokenizer = copy / next(f["file"] for f in spec["files"] if f["role"] == "tokenizer")
    tokenizer.write_text(tokenizer.read_text().replace('"</w>"', '"</W>"', 1))
    checked = no_torch("clothsim", "verify", str(copy))
    assert checked.returncode == 1 and str(tokenizer) in checked.stdout
    refused = no_torch("clothsim", "search", "--text", "red", "--index", str(copy))
    assert refused.returncode == 1 and "not the one recorded" in refused.stderr


def test_text_in_the_rest_api(clip_index, tmp_path, catalogue):
    pytest.importorskip("fastapi")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient
    from clothsim.web.app import create_app

    with TestClient(create_app(SimilarityIndex.open(clip_index))) as client:
        assert client.get("/health").json()["text_search"] is True  # the page offers its text box
        answer = client.post("/api/search", data={"text": "a red dress", "k": "3"})
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["query"] == {**body["query"], "kind": "text", "text": "a red dress"} and len(body["results"]) == 3
        photo = next((SAMPLE / "test" / "hat").glob("*.jpg"))
        both = client.post("/api/search", files={"image": ("q.jpg", photo.read_bytes(), "image/jpeg")},
                           data={"text": "red", "text_weight": "0.25", "k": "2"})
        assert both.status_code == 200 and both.json()["query"]["text"] == "red"
        assert client.post("/api/search", data={"text": "red", "id": "0"}).status_code == 422
        assert client.post("/api/search", data={"text": "red", "text_weight": "2"}).status_code == 422
    folder = tmp_path / "lite"
    SimilarityIndex.build(__import__("clothsim").read_catalog(str(catalogue / "labelled")), folder, progress=False)
    with TestClient(create_app(SimilarityIndex.open(folder))) as client:
        assert client.get("/health").json()["text_search"] is False
        refused = client.post("/api/search", data={"text": "a red dress"})
        assert refused.status_code == 422 and "no text tower" in refused.json()["detail"]
        assert str(folder) not in refused.text  # the server's folders stay out of public answers


# ----- labels from a list --------------------------------------------------------------------------------
def test_labels_from_a_list_become_categories_with_scores(clip_name, catalogue, tmp_path, capsys):
    from clothsim.zero_shot import read_label_list

    folder = tmp_path / "flat"
    labels = tmp_path / "labels.txt"
    labels.write_text("# what the shop sells\ndress\nshoes\nhat\n")
    assert read_label_list(str(labels)) == ["dress", "shoes", "hat"]
    argv = ["index", str(catalogue / "flat"), "--out", str(folder), "--encoder", clip_name, "--weights", "random",
            "--label-with", str(labels)]
    assert main(argv) == 0
    assert "labelled 15 items by category" in capsys.readouterr().out
    index = SimilarityIndex.open(folder)
    vectors, items = index.store.load_vectors()
    assert len(items) == 15
    text = index.embed_text(["a photo of a dress", "a photo of a shoes", "a photo of a hat"])
    for vector, item in zip(vectors, items):  # each item's label is the closest prompt, its score that cosine
        scores = vector @ text.T
        assert item.record.category == ["dress", "shoes", "hat"][int(np.argmax(scores))]
        stored = [a for a in item.record.attributes if a.startswith("category:score=")]
        assert stored == [f"category:score={scores.max():.4f}"]
    wanted = items[0].record.category
    hits = index.search_text("anything", k=15, category=wanted)
    assert hits and {h.record.category for h in hits} == {wanted}
    rows_before = index.store.total_rows
    assert main(argv) == 0  # the same command again: nothing changes, nothing is rewritten
    assert "0 changed" in capsys.readouterr().out
    assert SimilarityIndex.open(folder).store.total_rows == rows_before


def test_labels_as_a_named_attribute_keep_the_true_categories(clip_name, catalogue, tmp_path, capsys):
    folder = tmp_path / "colour"
    assert main(["index", str(catalogue / "labelled"), "--out", str(folder), "--encoder", clip_name,
                 "--weights", "random", "--label-with", "red,black,white", "--label-as", "colour",
                 "--label-prompt", "a {} garment"]) == 0
    for item in SimilarityIndex.open(folder).store.load_vectors()[1]:
        colours = [a for a in item.record.attributes if a.startswith("colour=")]
        assert item.record.category in CATEGORIES and len(colours) == 1
        assert colours[0].split("=")[1] in ("red", "black", "white")


def test_label_accuracy_against_a_naive_loop():
    from clothsim.zero_shot import label_accuracy

    rng = np.random.default_rng(0)
    images = rng.standard_normal((50, 8)).astype(np.float32)
    texts = rng.standard_normal((3, 8)).astype(np.float32)
    truth = [["a", "b", "c"][i % 3] for i in range(50)]
    result = label_accuracy(images, truth, texts, ["a", "b", "c"])
    right = sum(["a", "b", "c"][max(range(3), key=lambda j: float(images[i] @ texts[j]))] == truth[i] for i in range(50))
    assert result["accuracy"] == pytest.approx(right / 50) and result["n"] == 50


def test_evaluate_scores_labels_from_a_list_for_encoders_with_a_text_tower(clip_name, catalogue, tmp_path, capsys):
    import _tiny_encoders  # noqa: F401  - registers test-thumb8, an image-only encoder
    from clothsim.features.store import FeatureStore
    from clothsim.zero_shot import label_accuracy

    out = tmp_path / "report"
    assert main(["-q", "evaluate", "--data", str(catalogue / "labelled"), "--encoders", f"{clip_name},test-thumb8",
                 "--weights", f"{clip_name}=random", "--out", str(out), "--label-with", "categories",
                 "--tsne-points", "0", "--instance-queries", "0", "--grid-queries", "1"]) == 0
    report = json.loads((out / "report.json").read_text())
    by_name = {r["name"]: r for r in report["results"]}
    clip_result = next(r for name, r in by_name.items() if name.startswith("open_clip:"))
    labels = clip_result["labels"]
    assert labels["labels"] == sorted(CATEGORIES) and labels["n"] == 15 and labels["reason"] is None
    # The figure is the one a plain loop gives from the stored vectors and the exported text tower.
    vectors, items = FeatureStore.open(clip_result["stores"]["all"]).load_vectors()  # the query photos
    index = SimilarityIndex.build(__import__("clothsim").read_catalog(str(catalogue / "labelled")),
                                  tmp_path / "idx", encoder=create_encoder(clip_name, weights="random"),
                                  progress=False)[0]
    text = index.embed_text([f"a photo of a {c}" for c in sorted(CATEGORIES)])
    expected = label_accuracy(vectors, [it.record.category for it in items], text, sorted(CATEGORIES))
    assert labels["accuracy"] == pytest.approx(expected["accuracy"])
    assert by_name["test-thumb8"]["labels"]["accuracy"] is None
    assert by_name["test-thumb8"]["labels"]["reason"] == "no text tower"
    markdown = (out / "report.md").read_text()
    assert "label accuracy" in markdown and "test-thumb8: no label accuracy (no text tower)" in markdown


def test_a_causal_text_tower_runs_on_the_query_length_alone():
    """The exported tower of a plain CLIP model takes any length: a query runs on its own tokens, not on
    the whole context, and gives the vector open_clip gives on the padded context."""
    import torch

    from clothsim.encoders.factory import build_network
    from clothsim.runtimes.onnx_text import OnnxTextEncoder, used_length

    network = build_network(f"open_clip:{register_tiny_clip()}", weights="random")
    spec = network.spec
    assert spec.text["trim_after_end"] is True
    text = OnnxTextEncoder(spec)
    queries = ["red dress", "a blue denim jacket with silver buttons"]
    tokens = text.tokenizer(queries)
    assert used_length(tokens) < tokens.shape[1]  # there is padding to leave out
    seen = []
    real_run = text.session.run
    text.session = type("Spy", (), {"run": lambda self, out, feed: seen.append(feed["tokens"].shape) or real_run(out, feed),
                                    "get_inputs": text.session.get_inputs})()
    vectors = text.encode(queries)
    assert seen == [(2, used_length(tokens))]
    with torch.inference_mode():
        expected = network.model.encode_text(torch.from_numpy(tokens)).numpy()
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    assert np.sum(vectors * expected, axis=1).min() >= 0.9999
