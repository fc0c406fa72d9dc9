"""Shared fixtures: small deterministic datasets built in memory (no files, no downloads)."""

from __future__ import annotations

import functools
import math
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from onerec.config import ModelConfig
from onerec.data.schema import make_dataset
from onerec.data.splits import make_splits
from onerec.features import HistoryFeaturizer, TrainExamples
from onerec.model.generator import Generator
from onerec.train import train_generator
from onerec.train.checkpoint import model_meta

REPO = Path(__file__).resolve().parents[1]


def shared_datasets() -> Path:
    """The read-only real datasets folder (../shared/datasets beside the repo, or $ONEREC_DATASETS)."""
    return Path(os.environ.get("ONEREC_DATASETS", REPO.parent / "shared" / "datasets"))


@pytest.fixture(scope="module")
def one_thread():
    """Run a test module's tiny models on one torch thread: on a shared, oversubscribed CPU every
    multi-threaded op on tiny inputs stalls for milliseconds. The previous setting is restored."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def datasets_dir() -> Path:
    path = shared_datasets()
    if not path.exists():
        pytest.skip(f"real datasets not found at {path} (set ONEREC_DATASETS or place ../shared/datasets)")
    return path


@pytest.fixture
def dataset(datasets_dir: Path):
    """``dataset("amazon2014_s3rec")``: that folder of the real datasets, or a skip naming it when a
    datasets folder at hand holds only some of them."""

    def folder(name: str) -> Path:
        path = datasets_dir / name
        if not path.exists():
            pytest.skip(f"{name} not found in {datasets_dir} (see ../shared/datasets/README.md)")
        return path

    return folder


def cyclic_dataset(n_users: int = 60, n_items: int = 40, length: int = 12, seed: int = 0):
    """Users walk item ids upward from a random start (i -> i+1 mod N): a learnable pattern."""
    rng = np.random.default_rng(seed)
    users, items, ts = [], [], []
    for u in range(n_users):
        start = rng.integers(n_items)
        for t in range(length):
            users.append(f"u{u}")
            items.append((start + t) % n_items)
            ts.append(1_650_000_000 + 3600 * t)
    inter = pa.table({"user_id": users, "item_id": items, "timestamp": ts})
    item_tab = pa.table({"raw_id": [str(i) for i in range(n_items)], "title": [f"item {i}" for i in range(n_items)]})
    return make_dataset(name="cyclic", source="test", interactions=inter, items=item_tab)


@pytest.fixture
def cyclic():
    ds = cyclic_dataset()
    return ds, make_splits(ds, protocol="loo")


def random_codes(sizes: list[int], n: int, seed: int) -> torch.Tensor:
    """n distinct codes drawn uniformly from the product of the codebooks, in random item order."""
    g = torch.Generator().manual_seed(seed)
    flat = torch.randperm(math.prod(sizes), generator=g)[:n]
    digits = []
    for v in reversed(sizes):
        digits.append(flat % v)
        flat = flat // v
    return torch.stack(digits[::-1], dim=1)


# ---------------------------------------------------------------- tiny vision-language models
# Tiny randomly initialised VLMs (model + tokenizer + image processor) written to a local folder with
# the layout of a real Hugging Face snapshot, so the ``vlm`` backend loads them exactly as it would
# load Qwen2-VL-2B-Instruct, Qwen2.5-VL, Qwen3-VL or MiniCPM-V 4.6. No download: the configs are
# tiny, the weights random, the tokenizer a word-level vocabulary built here. (Root conftest, not
# tests/content/conftest.py: a second conftest module would shadow ``from conftest import ...``.)

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
           "<|video_pad|>"]
MINICPM_SPECIAL = {"image_start_token": "<image>", "image_end_token": "</image>", "slice_start_token": "<slice>",
                   "slice_end_token": "</slice>", "image_id_start_token": "<image_id>",
                   "image_id_end_token": "</image_id>"}
QWEN_IMAGE = "<|vision_start|><|image_pad|><|vision_end|>"
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}IMAGE"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
FAMILIES = ["qwen2_vl", "qwen2_5_vl", "qwen3_vl", "minicpmv4_6"]


def _tokenizer(words: list[str], family: str):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    extra = list(MINICPM_SPECIAL.values()) if family.startswith("minicpm") else []
    digits = [str(d) for d in range(10)]
    vocab = {w: i for i, w in enumerate([*SPECIAL, *extra, "[UNK]", *dict.fromkeys([*words, *digits])])}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation(),
                                                 pre_tokenizers.Digits(individual_digits=True)])
    named = {"image_token": "<|image_pad|>", "video_token": "<|video_pad|>"}
    if family.startswith("minicpm"):
        named |= MINICPM_SPECIAL
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]", pad_token="<|endoftext|>",
                                  eos_token="<|im_end|>", extra_special_tokens=named)
    tok.add_special_tokens({"additional_special_tokens": [*SPECIAL[1:], *extra]})
    image = "<|image_pad|>" if family.startswith("minicpm") else QWEN_IMAGE
    tok.chat_template = CHAT_TEMPLATE.replace("IMAGE", image)
    return tok


def build_tiny_vlm(folder: Path, words: list[str], family: str = "qwen2_vl") -> Path:
    """Write a tiny random ``family`` model, its tokenizer and its (PIL) image processor to ``folder``."""
    import transformers as tf

    tok = _tokenizer(words, family)
    ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIAL}
    text = {"vocab_size": len(tok), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 512,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [1, 1, 2]},
            "bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"]}
    vision_ids = {"image_token_id": ids["<|image_pad|>"], "video_token_id": ids["<|video_pad|>"]}
    qwen_ids = {**vision_ids, "vision_start_token_id": ids["<|vision_start|>"],
                "vision_end_token_id": ids["<|vision_end|>"]}
    small = {"depth": 2, "hidden_size": 16, "intermediate_size": 32, "num_heads": 2, "out_hidden_size": 32,
             "spatial_merge_size": 2, "temporal_patch_size": 2}
    patch = 16 if family == "qwen3_vl" else 14
    if family == "qwen2_vl":
        config = tf.Qwen2VLConfig(text_config=text, vision_config={
            "depth": 1, "embed_dim": 16, "hidden_size": 32, "num_heads": 2, "mlp_ratio": 2, "patch_size": 14,
            "spatial_merge_size": 2, "temporal_patch_size": 2}, **qwen_ids)
    elif family == "qwen2_5_vl":
        config = tf.Qwen2_5_VLConfig(text_config=text, vision_config={
            **small, "patch_size": 14, "window_size": 56, "fullatt_block_indexes": [1]}, **qwen_ids)
    elif family == "qwen3_vl":
        text["rope_parameters"]["mrope_interleaved"] = True
        config = tf.Qwen3VLConfig(text_config={**text, "head_dim": 8}, vision_config={
            **small, "patch_size": 16, "num_position_embeddings": 64, "deepstack_visual_indexes": [0]}, **qwen_ids)
    elif family == "minicpmv4_6":
        text = {**text, "model_type": "qwen3_5_text", "head_dim": 8, "layer_types": ["full_attention"] * 2}
        text["rope_parameters"] = {"rope_type": "default", "rope_theta": 10000.0}
        config = tf.MiniCPMV4_6Config(text_config=text, vision_config={
            "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
            "patch_size": 14, "image_size": 112, "insert_layer_id": 0}, insert_layer_id=0, image_size=112,
            **vision_ids)
    else:
        raise ValueError(family)
    model = tf.AutoModelForImageTextToText.from_config(config)
    if family.startswith("minicpm"):  # slices for images larger than 56 px: the slice path runs too
        from transformers.models.minicpmv4_6 import MiniCPMV4_6ImageProcessorPil

        image_proc = MiniCPMV4_6ImageProcessorPil(slice_mode=True, max_slice_nums=4, scale_resolution=56,
                                                  patch_size=14)
    else:
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

        image_proc = Qwen2VLImageProcessorPil(min_pixels=(2 * patch) ** 2, max_pixels=(4 * patch) ** 2,
                                              patch_size=patch, merge_size=2, temporal_patch_size=2)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)  # the processor classes need torchvision (their video half); the backend
    image_proc.save_pretrained(folder)  # falls back to tokenizer + image processor without it
    return folder


@pytest.fixture(scope="session")
def tiny_vlm_builder():
    """``build(folder, words, family)``: a tiny random VLM folder (seeded, so the same every run)."""

    def build(folder: Path, words: list[str], family: str = "qwen2_vl") -> Path:
        import torch

        torch.manual_seed(0)
        return build_tiny_vlm(folder, words, family)

    return build


# ---------------------------------------------------------------- training fixtures
# (here, not in tests/train/conftest.py: a second conftest module shadows ``from conftest import ...``)
@pytest.fixture
def tiny_train(cyclic):
    """(model config, codebook sizes, train examples): a tiny generator on the cyclic dataset with
    shuffled two-level codes (8 x 5)."""
    ds, splits = cyclic
    rng = np.random.default_rng(0)
    codes = np.stack([np.arange(ds.n_items) // 5, np.arange(ds.n_items) % 5], axis=1)
    rng.shuffle(codes)
    cfg = ModelConfig(d_model=32, n_heads=2, enc_layers=1, dec_layers=1, max_history=8, dropout=0.1)
    sizes = [int(codes[:, 0].max()) + 1, int(codes[:, 1].max()) + 1]
    return cfg, sizes, TrainExamples(splits["train"], HistoryFeaturizer(codes, cfg.max_history))


@pytest.fixture
def train_tiny(tiny_train):
    """``train_tiny(out, cfg, seed=0, **kw)``: trains a fresh tiny generator (initialised under ``seed``) with
    :func:`train_generator` into ``out`` and returns its result."""
    mcfg, sizes, ex = tiny_train

    def run(out, cfg, seed=0, **kw):
        torch.manual_seed(seed)
        return train_generator(Generator(mcfg, sizes), ex, cfg, out, meta=model_meta(mcfg, sizes), progress=False,
                               **kw)

    return run


@pytest.fixture
def scripted_scorer():
    """``scripted_scorer(scores)`` -> (score, seen): a valid scorer returning the next scripted score and
    remembering the weights it saw."""

    def make(scores):
        seen = []

        def score(model):
            seen.append({k: v.detach().clone() for k, v in model.state_dict().items()})
            return scores[len(seen) - 1]

        return score, seen

    return make


@pytest.fixture(scope="module")
def explore_world():
    """A small simulated world (150 users, 120 videos) for the exploration tests, one torch thread."""
    from onerec.config import SimConfig
    from onerec.data.simulator import build_world

    torch.set_num_threads(1)
    return build_world(SimConfig(n_users=150, n_items=120, n_events=1000, n_topics=6, n_authors=20,
                                 calib_pairs=2000, seed=3))


@pytest.fixture(scope="session")
def data_run(tmp_path_factory):
    """A tiny simulated run with its data stage only (the tiny preset's generator in its config), for the
    `onerec edge` tests; copy it before writing into it. (Here, not in a tests/edge/conftest.py: a second module
    named conftest would shadow this one for the test files that import its helpers.)"""
    from click.testing import CliRunner

    from onerec.cli import cli

    run = tmp_path_factory.mktemp("edge") / "run"
    sim = ["data.sim.n_users=120", "data.sim.n_items=60", "data.sim.n_events=3000", "data.sim.calib_pairs=2000",
           "data.sim.n_topics=6"]
    res = CliRunner().invoke(cli, ["data", "--out", str(run), "--preset", "tiny", *sim])
    assert res.exit_code == 0, res.output
    return run


@functools.cache
def compile_unavailable() -> str | None:
    """Why ``torch.compile`` (inductor) cannot run on this machine, or None: for the tests of ``generate.compile``
    to skip with that message."""
    try:
        torch.compile(lambda x: torch.relu(x) + 1, dynamic=False)(torch.zeros(3))
    except Exception as e:  # no C++ compiler, an unsupported platform or Python
        return f"torch.compile does not run on this machine ({type(e).__name__}: {str(e).splitlines()[0][:120]})"
    return None


def history_batch(codes: np.ndarray, n_users: int, seed: int, *, max_history: int, longest: int
                  ) -> dict[str, torch.Tensor]:
    """Featurized histories of ``n_users`` random users (1 .. ``longest`` - 1 items each; user 1's is empty), read
    through ``max_history`` (built by onerec.features)."""
    from onerec.features import EvalExamples

    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        n = 0 if u == 1 else int(rng.integers(1, longest))
        hist = rng.integers(0, len(codes), n).tolist()
        rows.append({"history": hist, "history_ts": list(range(1000, 1000 + 60 * n, 60)),
                     "history_flags": rng.integers(0, 4, n).tolist(), "target_ts": 5000})
    table = pa.Table.from_pylist(rows, schema=pa.schema([
        ("history", pa.list_(pa.int64())), ("history_ts", pa.list_(pa.int64())),
        ("history_flags", pa.list_(pa.int16())), ("target_ts", pa.int64())]))
    return EvalExamples(table, HistoryFeaturizer(codes, max_history)).batch(np.arange(n_users))


def assert_search_matches_reference(model, codes: torch.Tensor, sizes: list[int], batch: dict, beam: int,
                                    top_k: int, got: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> None:
    """A search's (items, scores, codes) ``got`` == the plain reference search (uncached decoder, Python trie) of
    ``model`` over the catalogue ``codes``: scores to 1e-4, items equal but for near-ties, every item valid, and as
    many items per user as the catalogue has (at most ``top_k``)."""
    from onerec.generate import PrefixTable, beam_search_reference

    items, scores, out_codes = got
    users = items.shape[0]
    with torch.no_grad():
        memory, mask = model.encode_batch(batch)
        state = {"m": memory.repeat_interleave(beam, 0), "k": mask.repeat_interleave(beam, 0)}
        ref = beam_search_reference(lambda t, s, st_: (model.step_log_probs(t, s, st_["m"], st_["k"]), st_),
                                    batch_size=users, table=PrefixTable.from_codes(codes, sizes), beam_size=beam,
                                    top_k=top_k, state=state, return_codes=True)
    # random weights give continuous scores; equal items up to float noise in near-ties
    torch.testing.assert_close(scores, ref[1], atol=1e-4, rtol=0)
    same = items == ref[0]
    assert same.all() or bool(((scores - ref[1]).abs() < 1e-4)[~same].all())
    live = items >= 0
    assert torch.equal(out_codes[live], codes[items[live]])
    assert int(live.sum(1).min()) == min(top_k, len(codes))  # as many items as exist, never an invalid one
