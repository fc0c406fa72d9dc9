"""Configuration: dataclasses with documented fields, YAML presets and dotted overrides.

Every field carries a ``help`` string (shown by ``onerec config``). A config is
built from, in order: the dataclass defaults, a named preset (``presets/<name>.yaml``), a YAML
file, then ``key=value`` overrides such as ``train.lr=3e-4``. An unknown key is an error that
names the nearest valid key. The resolved config is written into every run directory.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from onerec.errors import ConfigError

PRESET_DIR = Path(__file__).parent / "presets"
T = TypeVar("T")


def opt(default: Any, help: str, **extra: Any) -> Any:
    """A config field with a default and a help string (lists/dicts are copied per instance)."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"help": help, **extra})
    return field(default=default, metadata={"help": help, **extra})


def section(cls: type[T], help: str) -> Any:
    return field(default_factory=cls, metadata={"help": help})


# ----------------------------------------------------------------------------- data
@dataclass
class SimConfig:
    """The simulated short-video world (``onerec.data.simulator``)."""

    n_users: int = opt(3000, "number of simulated users")
    n_items: int = opt(2000, "number of simulated videos")
    n_events: int = opt(300_000, "total exposures logged, over both policies")
    n_topics: int = opt(24, "number of content topics")
    n_authors: int = opt(300, "number of video authors")
    random_share: float = opt(0.2, "share of exposures logged under uniform random exposure; "
                                   "the rest come from the production policy")
    taste_known: float = opt(0.5, "share of each user's taste (interest weight) the production policy knows")
    days: int = opt(30, "length of the logged period in days")
    start_date: str = opt("2022-04-08", "first day of the logged period (UTC, YYYY-MM-DD), as in KuaiRand")
    session_len: float = opt(12.0, "mean exposures per session")
    interest_stay: float = opt(0.75, "probability that a user's current interest carries over to the next "
                                     "session (else it is redrawn from the user's interests)")
    drift_boost: float = opt(2.0, "logit boost of videos in the user's current interest: the signal a "
                                  "sequential recommender can pick up from recent history")
    min_exposures: int = opt(10, "exposures every user gets before the heavy-tailed activity shares out the rest")
    activity_sigma: float = opt(1.0, "log-normal sigma of user activity (larger: heavier tail of very active users)")
    calib_pairs: int = opt(200_000, "random (user, video) pairs over which the response biases are solved "
                                    "to hit the KuaiRand random-exposure rates")
    seed: int = opt(0, "random seed; the same seed gives the same world and logs")


@dataclass
class DataConfig:
    """Which dataset to load or simulate, and how to split it."""

    source: str = opt("auto", "auto | simulate | amazon2014 | lcrec | recbole | kuairand | kuairec | table | "
                              "parquet. auto: simulate a world when data.path is unset, else the layout found at "
                              "data.path (.inter: recbole, .inter.json: lcrec, <Cat>.txt + <Cat>_item2attributes.json: "
                              "amazon2014, log_*.csv: kuairand, small/big_matrix.csv: kuairec, interactions.csv|tsv|"
                              "parquet: table (your own tables), dataset.json: parquet; none or several is an error "
                              "naming what was found). simulate with a data.path is an error",
                      choices=["auto", "simulate", "amazon2014", "lcrec", "recbole", "kuairand", "kuairec", "table",
                               "parquet"])
    path: str | None = opt(None, "folder (or main file) of the dataset; never ignored: with data.source=auto its "
                                 "layout picks the adapter")
    name: str | None = opt(None, "dataset name inside the folder, e.g. Beauty for amazon2014, Scientific for lcrec, "
                                 "ml-100k for recbole; inferred when the folder holds one (ml-100k.inter), needed "
                                 "when it holds several")
    split: str = opt("loo", "loo: leave-one-out (TIGER protocol) | time: global time split", choices=["loo", "time"])
    valid_frac: float = opt(0.1, "time split: share of the timeline held out for validation")
    test_frac: float = opt(0.1, "time split: share of the timeline held out for test")
    positive: str = opt("auto", "which events count as positive behaviour: auto | all | a '|'-joined list of "
                                "signal columns and numeric thresholds, any of which counts, e.g. "
                                "'long_view|like|follow' or 'rating>=4' (quote it in a shell)")
    options: dict[str, Any] = opt({}, "adapter options, e.g. data.options.text_path=DIR (amazon2014 titles), "
                                  "data.options.matrix=big (kuairec), data.options.logs=random (kuairand), "
                                  "data.options.time_unit=ms / user_column / item_column / time_column / "
                                  "tag_separator / keep_events=[a,b] + event_column (table)")
    min_positives: int = opt(3, "users with fewer positive events are left out of the split (leave-one-out needs 3)")
    sim: SimConfig = section(SimConfig, "simulated world settings (source=simulate)")


# -------------------------------------------------------------------------- content
@dataclass
class ContentAlignConfig:
    """Collaborative alignment (``onerec.content.align``): a QFormer over the backend's token
    vectors trained with item-to-item InfoNCE (OneRec Technical Report, Sec. 2.1)."""

    queries: int = opt(4, "learnable query tokens of the QFormer (the Technical Report uses 4)")
    layers: int = opt(2, "QFormer blocks (cross-attention -> RMSNorm -> FFN; the Technical Report uses 4)")
    d_model: int = opt(64, "QFormer width")
    heads: int = opt(4, "attention heads")
    dim: int = opt(64, "dimension of the aligned item vectors the tokenizer consumes")
    temperature: float = opt(0.07, "InfoNCE temperature")
    steps: int = opt(800, "optimiser steps")
    batch_size: int = opt(256, "item pairs per step (the other pairs in the batch are the negatives)")
    lr: float = opt(1e-3, "AdamW learning rate")
    weight_decay: float = opt(0.01, "AdamW weight decay")
    dropout: float = opt(0.0, "dropout in the QFormer")
    window: int = opt(10, "user->item pairs: a positive is paired with the most similar of the user's previous "
                          "`window` positives")
    swing_k: int = opt(10, "item->item pairs: each item's top-k Swing neighbours")
    swing_alpha: float = opt(1.0, "Swing smoothing alpha in 1/(alpha + |I_u & I_v|)")
    swing_share: float = opt(0.5, "share of each batch drawn from Swing pairs (the rest are user->item pairs)")
    max_user_items: int = opt(200, "Swing: only each user's most recent positives count (bounds the cost)")
    caption_weight: float = opt(0.0, "weight of the caption reconstruction loss (predict the caption's words "
                                      "from the aligned vector); 0 = off")
    caption_vocab: int = opt(2000, "caption reconstruction: most frequent words predicted")
    id_token: bool = opt(False, "append a learned per-item token to the QFormer's input, trained by the same "
                                "InfoNCE: items whose content vectors are identical (e.g. Amazon Sports, whose only "
                                "text is its attribute ids) can then still be told apart by who engages with them")
    residual: float = opt(0.0, "mix of the content-only vector kept in the output: "
                               "v = normalise((1-r)*aligned + r*content) (needs equal dims; 0 = aligned only)")
    seed: int = opt(0, "random seed")


@dataclass
class ContentConfig:
    """Item content vectors (``onerec.content``)."""

    backend: str = opt("tfidf", "content backend: 'tfidf' needs no downloaded weights; 'sentence' = a "
                                "sentence-transformers model, 'vlm' = a Hugging Face vision-language model, both "
                                "from a local folder (content.model_path)", choices=["tfidf", "sentence", "vlm"])
    dim: int = opt(64, "tfidf: dimension of the item vectors")
    max_features: int = opt(50_000, "tfidf: vocabulary size cap")
    text_fields: list[str] = opt(["title", "text", "tags", "category", "brand"],
                                 "item table columns joined into the text that is embedded (missing ones are skipped)")
    seed: int = opt(0, "random seed of the SVD")
    cache: bool = opt(True, "reuse vectors cached in the dataset folder when data and settings are unchanged")
    model_path: str | None = opt(None, "sentence/vlm: local folder holding the model (config, weights, tokenizer)")
    batch_size: int = opt(16, "sentence/vlm: items per forward pass (each finished batch is cached: resumable)")
    device: str = opt("cpu", "sentence/vlm: torch device, e.g. cpu or cuda")
    dtype: str = opt("float32", "vlm: weight dtype: float32 | bfloat16 | float16", choices=["float32", "bfloat16",
                                                                                              "float16"])
    tokens: int = opt(4, "vlm: hidden states pooled into this many token vectors per item; sentence: 1 = the "
                         "sentence embedding, more = its token embeddings pooled into that many segments")
    hidden_layer: int = opt(-1, "vlm: which hidden layer is pooled (-1 = the last)")
    max_text_chars: int = opt(1000, "sentence/vlm: text longer than this is cut")
    image_field: str = opt("cover", "vlm: items column with the cover image path (relative to content.media_root)")
    video_field: str = opt("video", "vlm: items column with the video file path (frames are sampled from it)")
    frames_field: str = opt("frames", "vlm: items column with a list of frame image paths (used when no video)")
    frames: int = opt(4, "vlm: frames sampled per video (0 = cover only)")
    image_size: int = opt(224, "vlm: images are resized to fit this square before the processor sees them")
    media_root: str | None = opt(None, "vlm: folder that relative image/video paths are resolved against "
                                       "(default: the dataset folder)")
    trust_remote_code: bool = opt(False, "vlm: allow the model folder's own Python code to run (needed by "
                                         "Keye-VL, whose config.json has an auto_map; an explicit opt-in)")
    align: bool = opt(False, "train the collaborative-alignment QFormer and tokenise its vectors instead")
    collaborative: str | None = opt(None, "'sasrec': tokenise purely collaborative item vectors instead of content, "
                                          "the item embeddings of a SASRec (full-softmax CE, eval.sasrec's other "
                                          "settings) trained on the train split and early-stopped on valid; no "
                                          "text is read. None: content vectors", choices=[None, "sasrec"])
    alignment: ContentAlignConfig = section(ContentAlignConfig,
                                            "collaborative alignment (used when content.align=true)")


# ------------------------------------------------------------------------ tokenizer
@dataclass
class TokenizerConfig:
    """Semantic IDs by residual k-means (``onerec.tokenizer``)."""

    levels: int = opt(3, "number of residual k-means levels L")
    codebook_size: int = opt(64, "codes per level K (OneRec uses 8192 at scale)")
    balanced: bool = opt(False, "use OneRec V1's balanced k-means (Algorithm 1): every code gets N/K items")
    iters: int = opt(25, "k-means iterations per level")
    unique_level: bool = opt(True, "append an extra level that makes every item's code unique")
    collision_order: str = opt("item", "how the unique level numbers the items that share an L-level code: "
                               "'item' (item order), 'popularity' (most train-split interactions first), "
                               "'centroid' (nearest to the code's reconstruction first)",
                               choices=["item", "popularity", "centroid"])
    normalize: bool = opt(True, "L2-normalise item vectors before quantising")
    seed: int = opt(0, "random seed of the k-means initialisation")
    index: str | None = opt(None, "a published semantic-ID index (LC-Rec JSON: {item key: ['<a_N>', '<b_N>', ...]}) "
                            "used instead of fitting ours; items that share an ID get the collision level")
    index_offset: int = opt(0, "tokenizer.index: an item's key is its raw id plus this (-1 for the 0-based LC-Rec "
                            "files of the 1-based S3Rec Amazon 2014 data)")


# ---------------------------------------------------------------------------- model
@dataclass
class ModelConfig:
    """Generator v0: encoder over the user's history, decoder over semantic-ID tokens."""

    arch: str = opt("encdec", "encdec: encoder over the user's pathways + decoder with cross-attention (OneRec V1, "
                              "Technical Report) | lazy: OneRec-V2's lazy decoder-only model (a context processor "
                              "makes layer-shared keys/values once; the decoder reads them; trains on every position "
                              "of a sequence at once, see train.objective)", choices=["encdec", "lazy"])
    d_model: int = opt(128, "hidden size")
    n_heads: int = opt(4, "attention heads")
    enc_layers: int = opt(2, "encoder layers")
    dec_layers: int = opt(2, "decoder layers")
    ffn_mult: float = opt(4.0, "feed-forward hidden size as a multiple of d_model")
    dropout: float = opt(0.1, "dropout rate")
    max_history: int = opt(50, "most recent positive behaviours fed to the encoder (OneRec V1 uses 256)")
    # --- the Technical Report's model (arXiv 2506.13695); defaults keep the simple v0 model
    ffn_hidden: int | None = opt(None, "dense SwiGLU hidden width (None: (2/3)*ffn_mult*d_model rounded up to 32)")
    moe_experts: int = opt(0, "experts per MoE feed-forward (0: dense feed-forward everywhere)")
    moe_top_k: int = opt(2, "experts each token is routed to")
    moe_hidden: int | None = opt(None, "each expert's SwiGLU hidden width (None: the dense width)")
    moe_where: str = opt("decoder", "which stacks use MoE feed-forwards", choices=["decoder", "both"])
    moe_bias_step: float = opt(1e-3, "loss-free load balancing: per-step change of an expert's routing bias")
    moe_impl: str = opt("grouped", "grouped: grouped matmul without padding (fast; padded off CPU) | padded: "
                                   "batched matmuls over a padded buffer | loop: reference loop over experts",
                        choices=["grouped", "padded", "loop"])
    encoder_impl: str = opt("packed", "packed: the encoder's projections and feed-forwards and the decoder's "
                                      "cross-attention keys/values are computed for real history tokens only, "
                                      "not for padding (fast) | padded: for every position (reference)",
                            choices=["packed", "padded"])
    pathways: list[str] = opt(["positive"], "encoder pathways, any of: static (user id + user features), "
                                            "short (last short_len behaviours of any kind), positive (last "
                                            "max_history positives), lifelong (compressed long log + QFormer), "
                                            "succession (the items that most often followed the last positives "
                                            "in the train split; not in the papers)")
    behaviour_features: list[str] = opt(["sid", "label", "time"],
                                        "features summed into each behaviour token, any of: sid, item, author, "
                                        "tag, time, play, duration, label (missing data -> padding)")
    history_tokens: str = opt("item", "item: one encoder token per behaviour, the sum of its features (OneRec) | "
                                      "code: one per semantic-ID code of each behaviour in the short and positive "
                                      "pathways (TIGER's flattened history): that code's embedding + a level "
                                      "embedding + the behaviour's other features; D times the encoder tokens",
                              choices=["item", "code"])
    sparse_buckets: int = opt(0, "rows of each hashed id table (item, author, tag, user id); 0 = no id tables")
    feature_dim: int | None = opt(None, "width of the behaviour/user feature embeddings and the QFormer (None: "
                                        "d_model, sharing the decoder's semantic-ID embedding); pathways project "
                                        "it to d_model")
    pathway_mlp: bool = opt(False, "project each pathway's tokens with Dense -> LeakyReLU -> Dense (Technical Report)")
    short_len: int = opt(20, "behaviours in the short-term pathway")
    lifelong_max: int = opt(2000, "most recent behaviours the lifelong pathway compresses")
    lifelong_reps: int = opt(64, "representatives kept after hierarchical clustering (the report: ~2000)")
    qformer_queries: int = opt(16, "learnable QFormer queries summarising the lifelong pathway (the report: 128)")
    qformer_layers: int = opt(2, "QFormer blocks (cross-attention -> RMSNorm -> FFN)")
    succession_len: int = opt(10, "succession pathway: candidate items, best first")
    succession_window: int = opt(10, "succession pathway: last positives whose successors are counted")
    succession_decay: float = opt(0.1, "succession pathway: weight of the d-th last positive's successors, "
                                       "decay^(d-1) (window 10 and decay 0.1 were best on Beauty's and Toys' valid "
                                       "splits for the transitions baseline)")
    tie_code_embeddings: bool = opt(False, "share each semantic-ID level's input embedding with its output head")
    kv_heads: int | None = opt(None, "lazy: G_kv, key/value heads of the cross-attention shared by the n_heads "
                                     "query heads (grouped-query attention); None: n_heads, as in OneRec-V2's "
                                     "experiments (on the quickstart world's valid split G_kv = 1 lost 13% of "
                                     "Recall@10 against G_kv = 4)")
    kv_layers: int = opt(1, "lazy: L_kv, sets of context keys/values; decoder layer l of N reads set "
                            "floor(l * L_kv / N)")
    kv_split: int = opt(1, "lazy: S_kv, 1 = keys and values tied (the same vectors), 2 = separate", choices=[1, 2])
    moe_dense_layers: int = opt(0, "lazy with moe_experts: the first N decoder layers keep a dense feed-forward "
                                   "(OneRec-V2 puts the experts in the deeper layers)")
    session_len: int = opt(1, "items generated per sample: 1 = point-wise (Technical Report), m > 1 = OneRec V1's "
                              "session-wise training (the next m positives as one target sequence)")


# ---------------------------------------------------------------------------- train
@dataclass
class TrainConfig:
    """Next-token pretraining (``onerec.train``)."""

    epochs: int = opt(60, "passes over the training examples (at most: with early_stop_metric set, training stops "
                          "once the valid metric has not improved for `patience` scorings)")
    max_steps: int | None = opt(None, "stop after this many optimizer steps (overrides epochs)")
    batch_size: int = opt(256, "examples per optimizer step (with several processes or grad_accum: per process "
                               "and micro-batch)")
    lr: float = opt(2e-3, "peak AdamW learning rate")
    weight_decay: float = opt(0.01, "AdamW weight decay")
    warmup_steps: int = opt(100, "linear warm-up steps before cosine decay")
    grad_clip: float = opt(1.0, "max gradient norm (0 disables)")
    label_smoothing: float = opt(0.0, "share of each target code's probability spread uniformly over its level's "
                                      "codebook in the training loss (validation losses stay plain cross-entropy)")
    objective: str = opt("auto", "prefix: one sample per next item, its history encoded on its own | "
                                 "all_positions: one pass per user sequence computes every next item's loss, each "
                                 "target seeing only the behaviours before it (model.arch=lazy, positive pathway) | "
                                 "auto: all_positions where the model allows it, else prefix",
                         choices=["auto", "prefix", "all_positions"])
    checkpoint_every: int = opt(500, "save a resumable checkpoint every N steps (and at the end)")
    log_every: int = opt(20, "record the training loss every N steps")
    logger: str = opt("csv", "watch training live: csv (RUN/logs/train-<time>/scalars.csv) | tensorboard (event "
                             "files for `tensorboard --logdir RUN/logs`; pip install 'onerec[tensorboard]') | none: "
                             "loss, learning rate, throughput, expert load, valid metrics",
                      choices=["csv", "tensorboard", "none"])
    device: str = opt("auto", "auto | cpu | cuda | cuda:N")
    threads: int | None = opt(None, "torch CPU threads (default: this process's share of the physical cores: all of "
                                    "them, divided among the processes torchrun starts on the machine; or "
                                    "OMP_NUM_THREADS when set)")
    seed: int = opt(0, "random seed of initialisation and shuffling")
    early_stop_metric: str | None = opt("ndcg@10", "valid metric scored every epoch (every valid_every epochs) "
                                                   "with the eval harness (beam search, full ranking); the best "
                                                   "scored epoch's weights are kept and training stops after "
                                                   "`patience` scorings without improvement, as SASRec's baseline "
                                                   "is trained. None: off (the last epoch's weights)",
                                        choices=[None, "ndcg@10", "recall@10", "ndcg@5", "recall@5"])
    patience: int = opt(10, "early stopping: valid scorings without improvement before training stops (epochs, "
                            "with valid_every 1)")
    valid_every: int = opt(1, "early stopping: score the valid split every N epochs, and at the end of training; "
                              "the valid loss is still computed every epoch. On Amazon an epoch's beam search over "
                              "every valid user takes about as long as its training steps (docs/benchmarks/lazy.md), "
                              "so 2 saves about a quarter of a run, at the price of picking the best among every "
                              "other epoch")
    valid_users: int | None = opt(None, "early stopping: score only this many valid users (a fixed random subset; "
                                        "None: all)")
    time_budget_s: float | None = opt(None, "stop training after this many seconds, keeping the best (or last) "
                                            "weights; the cosine schedule still spans the planned steps. Counts "
                                            "the whole training, the time before a --resume included")
    ema_decay: float | None = opt(None, "keep an exponential moving average of the weights, updated after every "
                                        "optimizer step with this decay (e.g. 0.999: a horizon of ~1,000 steps); "
                                        "the average is what the valid split scores, early stopping keeps and the "
                                        "run saves. None: off, the raw weights")
    precision: str = opt("fp32", "training arithmetic: fp32 | bf16 (torch.autocast: matrix multiplies in bfloat16, "
                                 "weights, optimizer and loss in fp32; for GPUs and for CPUs with AVX-512 BF16 or "
                                 "AMX, elsewhere it is slower). Validation and generation stay fp32",
                         choices=["fp32", "bf16"])
    strategy: str = opt("auto", "several processes (torchrun --nproc_per_node=N -m onerec train RUN): ddp "
                                "(DistributedDataParallel: every rank holds the whole model) | fsdp (FSDP2: "
                                "parameters, gradients and optimizer state sharded over the ranks; sharded "
                                "checkpoints) | auto: fsdp above 250M parameters, else ddp. One process: ignored",
                        choices=["auto", "ddp", "fsdp"])
    grad_accum: int = opt(1, "micro-batches of batch_size accumulated per optimizer step: the global batch is "
                             "batch_size x processes x grad_accum, and the learning-rate schedule counts its steps")
    activation_checkpointing: bool = opt(False, "recompute each transformer block's activations in the backward "
                                                "pass instead of storing them (less memory, ~1/3 more compute)")
    compile: bool = opt(False, "torch.compile the model for training (inductor; the first steps compile)")
    fsdp_mixed_precision: str = opt("fp32", "train.strategy=fsdp: bf16 gathers parameters and computes in bfloat16 "
                                            "(gradients reduced in fp32, fp32 master weights and optimizer) | fp32",
                                    choices=["fp32", "bf16"])
    fsdp_reshard_after_forward: bool = opt(True, "train.strategy=fsdp: free each block's gathered parameters after "
                                                 "its forward (less memory; gathered again for the backward)")


# ------------------------------------------------------------------------- generate
@dataclass
class GenerateConfig:
    """Constrained beam search (``onerec.generate``)."""

    beam_size: int = opt(32, "beams kept per user at each decoding step")
    top_k: int = opt(50, "distinct items returned per user")
    batch_size: int = opt(256, "users decoded together")
    succession_prior: float = opt(0.0, "weight of log(1 + succession score) added to the generator's log-probability "
                                       "when its beam is pooled with the items that most often followed the user's "
                                       "last items in the train split (shallow fusion, not in the papers); 0 = the "
                                       "generator alone")
    succession_pool: int = opt(20, "succession_prior > 0: candidates from the succession counts added to the beam")
    succession_window: int = opt(10, "succession_prior > 0: last history items whose successors are counted")
    succession_decay: float = opt(0.1, "succession_prior > 0: weight of the d-th last history item's successors, "
                                       "decay^(d-1)")
    exclude_seen: bool = opt(False, "onerec generate and serve leave out the items already in the user's history "
                                    "(the beam search masks them, so k unseen items still come back); `onerec "
                                    "generate --exclude-seen/--include-seen` and a request's exclude_seen override it. "
                                    "Evaluation has its own setting, eval.exclude_seen")
    compile: str = opt("false", "how eval, generate, serve, tune-prior and train's per-epoch valid scoring run the "
                                "beam search's decode step: false "
                                "(eagerly) | true (torch.compile: inductor's C++ kernels on CPU, CUDA graphs on GPU; "
                                "the first search of each process compiles, a minute or more on a CPU) | aot "
                                "(AOTInductor: compiled ahead of time once per model architecture into the run's "
                                "aot/ folder, then loaded by every later command, ~0.3 s a level; fp32 only). "
                                "CPU speed-ups of the step in docs/benchmarks/generation.md; serve compiles before "
                                "it listens; without a C++ compiler both warn and decode eagerly",
                       choices=["false", "true", "aot"])
    precision: str = opt("fp32", "decoding arithmetic in eval, generate, serve, tune-prior and train's per-epoch "
                                 "valid scoring: fp32 | bf16 "
                                 "(torch.autocast: the encoder's and decoder's matrix multiplies in bfloat16; "
                                 "log-probabilities and beam scores stay float32). bf16 pays on a GPU and on a CPU "
                                 "with bfloat16 matrix units at large batch x beam (docs/benchmarks/generation.md); "
                                 "scores move by ~1e-2, so near-tied items can change places",
                         choices=["fp32", "bf16"])


# ---------------------------------------------------------------------------- serve
@dataclass
class ServeConfig:
    """HTTP recommendation service (``onerec serve``)."""

    host: str = opt("127.0.0.1", "interface to listen on (0.0.0.0 exposes it to the network)")
    port: int = opt(8000, "TCP port")
    max_k: int = opt(100, "largest k a request may ask for (beam width is max(generate.beam_size, k))")
    explore_slots: int = opt(0, "N > 0: the last N positions of each onerec answer go to new items chosen by AGE "
                                "(onerec.explore.serving; the answer marks them explore: true). The exploration CTR "
                                "model is trained on the run's log when the service starts (explore.* settings); 0: "
                                "off")
    explore_budget: float = opt(1.0, "serve.explore_slots: a new item takes an exploration position only where its "
                                     "AGE score is at least (1 - budget) x the exploration CTR model's prediction "
                                     "for the item it displaces (explore.online_explore_budget online); 1: always")
    explore_new: int = opt(30, "serve.explore_slots: items shown fewer times than this in the run's log count as new")
    explore_policy: str = opt("age_ucb", "serve.explore_slots: the AGE variant that scores the new items (age_ucb: "
                                         "MC-dropout spread as uncertainty; age_ts: one dropout mask)",
                              choices=["age_ucb", "age_ts"])
    max_batch: int = opt(64, "most requests decoded together in one micro-batched beam search")
    batch_wait_ms: float = opt(2.0, "how long the first queued request waits for others to join its batch")
    max_body_bytes: int = opt(65536, "larger request bodies are refused with 413")
    max_history: int = opt(10000, "most items an explicit history may list (the model reads the latest "
                                  "model.max_history)")
    max_queue: int = opt(256, "most requests waiting for a beam search; beyond it requests are refused at once "
                              "with 503 and a Retry-After header")
    request_timeout_ms: float = opt(10000.0, "deadline of a request from its arrival: one not answered by then gets "
                                             "504 (and is dropped if it was not yet decoded)")
    retry_after_s: int = opt(1, "Retry-After (seconds) sent with 503 when the queue is full")
    keep_alive_s: float = opt(5.0, "an idle connection (before its first request or between requests) is closed "
                                   "after this many seconds")
    read_timeout_s: float = opt(10.0, "a request whose headers and body have not all arrived this many seconds after "
                                      "its first byte is answered 408 and its connection closed (slow or half-sent "
                                      "requests)")
    max_header_bytes: int = opt(16384, "request line plus headers larger than this are refused (400 from the HTTP "
                                       "parser, or 431)")
    limit_concurrency: int = opt(512, "while this many connections are open (or requests in flight), uvicorn "
                                      "answers new requests with 503")
    torch_threads: int = opt(1, "torch intra-op threads of the server's beam search (0: torch's default, one per "
                                "core); on a busy shared CPU more than one makes requests stall")
    workers: int = opt(1, "worker processes on one listening socket (uvicorn's workers), each with its own model "
                          "and micro-batcher: N workers run N searches at once and hold N copies of the model")


# ----------------------------------------------------------------------------- eval
@dataclass
class SasrecConfig:
    """SASRec baseline (Kang & McAuley 2018)."""

    loss: str = opt("ce", "ce: full-softmax cross-entropy | bce: binary cross-entropy with one sampled negative",
                    choices=["ce", "bce"])
    d_model: int = opt(64, "hidden size")
    n_layers: int = opt(2, "self-attention blocks")
    n_heads: int = opt(1, "attention heads")
    dropout: float = opt(0.5, "dropout rate (the paper uses 0.5 on sparse Amazon data, 0.2 on dense MovieLens)")
    max_len: int = opt(50, "most recent items in the input sequence")
    epochs: int = opt(200, "maximum training epochs (early stopping on the valid split usually ends sooner)")
    batch_size: int = opt(128, "sequences per step")
    lr: float = opt(2e-3, "Adam learning rate")
    weight_decay: float = opt(0.0, "Adam L2 weight decay (the original SASRec uses none)")
    seed: int = opt(0, "random seed of initialisation, shuffling, dropout and negative sampling")
    eval_every: int = opt(1, "score the valid split every N epochs for early stopping (when a valid split is given)")
    patience: int = opt(10, "stop after this many valid evaluations without improvement; the best weights are kept")
    early_stop_metric: str = opt("ndcg@10", "valid metric that picks the best epoch", choices=["ndcg@10", "recall@10"])
    exclude_history: bool = opt(False, "never recommend items already in the user's history")
    eval_batch_size: int = opt(1024, "users scored at once when recommending")
    time_budget_s: float | None = opt(None, "stop training after this many seconds (None: no limit)")


@dataclass
class EvalConfig:
    """Offline evaluation protocol (``onerec.eval``)."""

    ks: list[int] = opt([1, 5, 10, 20, 50], "cut-offs K for Recall@K and NDCG@K")
    split: str = opt("test", "which held-out split to score: valid | test", choices=["valid", "test"])
    baselines: list[str] = opt(["popular", "sasrec"],
                               "baselines scored in the same harness: popular, transitions, sasrec, sasrec_bce, "
                               "sasrec_ce")
    exclude_seen: bool = opt(False, "leave each scored user's history out of every model's ranking: onerec's beam "
                                    "search and the baselines (popular, transitions, SASRec) alike. false is the "
                                    "TIGER protocol (leave-one-out, full ranking over all items, history not "
                                    "excluded: a user may consume an item again), which every published and "
                                    "benchmark number here uses")
    sasrec: SasrecConfig = section(SasrecConfig, "SASRec baseline settings")



@dataclass
class RewardConfig:
    """The P-Score reward model (``onerec reward``): SIM + CAN multi-task ranker over logged exposures."""

    objectives: list[str] = opt(["click", "long_view", "complete_play", "like", "follow"],
                                "signals with one tower each (columns of the interactions table)")
    d_model: int = opt(32, "embedding / attention width")
    n_heads: int = opt(2, "heads of the DIN and ESU target attention")
    long_len: int = opt(64, "long history length searched by SIM (most recent positives)")
    short_len: int = opt(16, "short history length for DIN target attention and CAN")
    sim: bool = opt(True, "use SIM (GSU + ESU) over the long history; False ablates it")
    gsu: str = opt("both", "SIM General Search Unit: hard (same first SID level) | soft (top-K inner product) "
                           "| both", choices=["hard", "soft", "both"])
    top_k: int = opt(8, "behaviours kept by each GSU search")
    soft_dim: int = opt(16, "projection width of the soft search")
    aux_weight: float = opt(0.5, "weight of SIM's auxiliary CTR loss that trains the soft search")
    can: bool = opt(True, "use CAN co-action units; False ablates them")
    can_dims: list[int] = opt([16, 8, 4], "CAN per-sample MLP widths (official: 16 -> 8 -> 4)")
    can_orders: int = opt(3, "CAN orders 1..n of the history parameters")
    tower_hidden: int = opt(64, "hidden width of each tower and of the fusion MLP")
    test_frac: float = opt(0.2, "share of the exposure timeline held out for AUC / GAUC")
    pref_cap_s: float = opt(60.0, "fusion target: watch time capped at this many seconds, over the cap")
    epochs: int = opt(2, "passes over the train exposures")
    batch_size: int = opt(512, "exposures per step")
    lr: float = opt(2e-3, "Adam learning rate")
    ablations: bool = opt(True, "`onerec reward` also trains the DIN baseline and the no-SIM / no-CAN ablations")
    seed: int = opt(0, "random seed")


@dataclass
class AlignConfig:
    """Preference alignment of the generator (``onerec align``): IPA with DPO, ECPO, GBPO, rejection sampling."""

    method: str = opt("ecpo", "dpo: OneRec V1 iterative preference alignment | ecpo: Technical Report "
                              "early-clipped GRPO | gbpo: OneRec-V2 gradient-bounded policy optimisation "
                              "(its advantage: align.gbpo_reward)", choices=["dpo", "ecpo", "gbpo"])
    iterations: int = opt(3, "alignment rounds (each regenerates samples with the current model)")
    users_per_iter: int = opt(512, "users sampled per round")
    steps_per_iter: int = opt(20, "optimizer steps per round")
    batch_users: int = opt(32, "users per optimizer step")
    beam_size: int = opt(16, "dpo: N beam-searched candidates per user; ecpo, gbpo: group size G")
    beta: float = opt(0.1, "dpo: temperature beta of the DPO loss")
    dpo_weight: float = opt(1.0, "dpo: lambda in NTP + lambda * DPO")
    ntp_weight: float = opt(1.0, "weight of the next-token loss kept alongside DPO / ECPO / GBPO")
    clip_eps: float = opt(0.2, "ecpo: PPO clipping epsilon")
    clip_delta: float = opt(0.1, "ecpo: early-clipping delta for negative advantages")
    illegal_reward: float = opt(-1.0, "ecpo: format reward: reward (in group std units below the group's "
                                      "worst legal sample) of a generated code that maps to no item")
    gbpo_reward: str = opt("duration", "gbpo: where its advantage comes from. duration: OneRec-V2's duration-aware "
                                       "shaping of real feedback -- each rollout that maps to an item is shown to its "
                                       "user in the simulated world (one sampled play time and dislike); A = +1 when "
                                       "its play time's percentile among the logged play times of its duration "
                                       "bucket (log scale, align.duration_base) is in the top align.top_share "
                                       "(align.top_of), A = -1 for a dislike or an illegal code, else 0; needs a "
                                       "simulated run | pscore: ECPO's group-normalised P-Score advantage with the "
                                       "format reward (runs without a world)",
                              choices=["duration", "pscore"])
    duration_base: float = opt(2.0, "gbpo duration reward: videos are bucketed by floor(log_base(duration in s))")
    top_share: float = opt(0.25, "gbpo duration reward: the share that earns A = +1 (OneRec-V2: the top 25%)")
    top_of: str = opt("batch", "gbpo duration reward: what align.top_share is a share of. batch: of a round's shown "
                               "rollouts, ranked by their within-bucket percentile | log: of the logged plays of the "
                               "bucket (A = +1 when the percentile >= 1 - top_share; more positives as the policy "
                               "beats the log)", choices=["batch", "log"])
    rsft_keep: float = opt(0.5, "rejection-sampling fine-tuning keeps this top share of samples by reward "
                                "(gbpo duration: by play-time percentile) for the NTP loss (0 disables it: NTP "
                                "on the logged targets)")
    lr: float = opt(1e-4, "Adam learning rate")
    industrial_f: float = opt(1.0, "industrial reward: share of a top-K above which the targeted class is "
                                   "scaled down (1.0 disables it)")
    industrial_scale: float = opt(0.5, "industrial reward: multiplier of a targeted item's reward past the share")
    industrial_class: int = opt(-1, "industrial reward: the targeted class (first SID level); -1 = none")
    eval_users: int = opt(500, "users scored in the simulated world before / after alignment")
    top_k: int = opt(10, "length of the recommended list scored in the world")
    cascade_retrieve: int = opt(100, "cascade baseline: SASRec candidates re-ranked by the P-Score")
    seed: int = opt(0, "random seed")


# -------------------------------------------------------------------------- explore
@dataclass
class ExploreConfig:
    """Exploration for new items (``onerec explore``): AGE (arXiv 2112.11136) beside the classic bandit policies,
    measured by unbiased offline replay (Li et al. 2011) of a uniformly random policy's log in the simulated world,
    and online: several simulated days with new videos arriving, the policy retrained on its own exposures daily."""

    policies: list[str] = opt(["random", "greedy", "epsilon", "ucb", "thompson", "age_ucb", "age_ts"],
                              "policies replayed: random | greedy (the CTR model, no exploration) | epsilon "
                              "(epsilon-greedy) | ucb (MC-dropout mean + alpha * spread) | thompson (one dropout "
                              "mask) | age_ucb, age_ts (AGE with the UCB-style or Thompson-style uncertainty) | "
                              "age_nounc (AGE with the uncertainty off: every item moves by the same step)")
    seeds: list[int] = opt([0], "replay seeds: each draws its own log, model initialisation and dropout masks")
    events: int = opt(40_000, "events in the logged stream; each shows explore.candidates items to one user and logs "
                              "one of them, picked uniformly")
    candidates: int = opt(10, "K: candidates per event (about 1/K of the events are accepted by a policy)")
    pool: int = opt(100, "items live at any time: items arrive one by one over the stream and an event's candidates "
                         "come from the explore.pool latest arrivals, so new items keep coming")
    block: int = opt(100, "events decided with one state of the model; it then trains on the block's accepted "
                          "events (one mini-batch)")
    updates: int = opt(1, "gradient steps on each block's accepted events")
    lr: float = opt(5e-3, "Adam learning rate of the online updates (CTR model and gate)")
    d_model: int = opt(16, "embedding width of the CTR model (the DIN baseline of onerec.reward)")
    tower_hidden: int = opt(32, "hidden width of the CTR model's towers and of the gate")
    history: int = opt(16, "most recent logged positives of the user that the CTR model's DIN attention reads")
    dropout: float = opt(0.1, "dropout rate in the towers, in training and in MC dropout")
    mc_passes: int = opt(20, "N: dropout passes of the UCB-style uncertainty (the AGE paper uses 20)")
    ucb_stat: str = opt("std", "spread over the N passes used as uncertainty by ucb and age_ucb: std | var",
                        choices=["std", "var"])
    ucb_alpha: float = opt(1.0, "ucb: score = mean + alpha * spread over the N passes")
    uncertainty: str = opt("mc_dropout", "where the policies' uncertainty comes from: mc_dropout (the AGE paper's: "
                                         "the spread over N dropout passes, or one mask for the Thompson forms) | "
                                         "count (an uncertainty that shrinks with the item's data: count_sigma / "
                                         "sqrt(1 + n), n = the item's showings so far as max_impressions counts "
                                         "them; the Thompson forms draw count_sigma / sqrt(1 + n) x a standard "
                                         "normal)", choices=["mc_dropout", "count"])
    count_sigma: float = opt(0.1, "uncertainty=count: the spread of an item never shown, in predicted probability")
    epsilon: float = opt(0.1, "epsilon: share of events given a uniformly random pick")
    age_lambda: float = opt(10.0, "AGE: lambda in h' = h + lambda * delta_y * g / ||g|| (h: the item representation, "
                                  "g: the gradient of the predicted CTR at h, delta_y: the uncertainty); 10 was the "
                                  "best of 1 / 10 / 30 / 100 for age_ts on a tuning seed of the replay")
    attack: str = opt("pgd", "AGE: fgm = one step | pgd = explore.pgd_steps steps of explore.pgd_step * lambda * "
                             "delta_y along the gradient at the current point, projected back into the ball of "
                             "radius lambda * |delta_y| around h", choices=["fgm", "pgd"])
    pgd_steps: int = opt(3, "AGE pgd: number of steps")
    pgd_step: float = opt(0.5, "AGE pgd: step size, as a share of the radius lambda * |delta_y|")
    max_impressions: int | None = opt(None, "ucb, thompson and AGE explore only items shown fewer times than this "
                                            "(the replay: the policy's accepted events of the item; online: its "
                                            "exposures) and score the others as greedy; the AGE paper's online "
                                            "deployment explored items with < 3,000 impressions. null: every item. "
                                            "Serving has its own cap: serve.explore_new")
    gate: bool = opt(True, "AGE: the dynamic gating unit -- explore an item only where its predicted CTR f(h) beats "
                           "the threshold a shallow item-only model (category, author, duration) predicts; false: "
                           "explore every item")
    objective: str = opt("click", "the signal the policies maximise (the CTR model's tower they read)",
                         choices=["click", "long_view"])
    evaluations: list[str] = opt(["replay", "online"], "what `onerec explore` runs: replay (the offline replay above) "
                                 "| online (explore.online_days simulated days with new videos arriving daily, "
                                 "the serving cascade retrained on its own exposures every day)")
    online_days: int = opt(7, "online: simulated days; new videos arrive at the start of every day")
    online_initial: int = opt(400, "online: videos in the catalogue before day 0, with a warm-up history")
    online_new_per_day: int = opt(40, "online: new videos entering the catalogue each day, with content but no "
                                      "history; they get semantic IDs from their content vectors (the tokenizer's "
                                      "cold-start encode) and the CTR model reads the first SID level as category")
    online_new_days: int = opt(3, "online: a video counts as new for this many days after it arrives (it is in the "
                                  "new-candidate branch and the exploration slots may pick it)")
    online_requests: int = opt(1500, "online: feed requests per day (users drawn by activity)")
    online_slate: int = opt(6, "online: videos shown per request")
    online_explore_slots: int = opt(1, "online: slots of each slate the exploration policy fills from the new "
                                       "candidates; the others take the CTR model's best candidates (the 'none' "
                                       "reference fills every slot that way). 0: no slot is reserved, the policy's "
                                       "own scores (e.g. AGE's f(h')) rank every candidate")
    online_explore_budget: float = opt(1.0, "online: how much predicted value an exploration slot may give up: it "
                                            "shows the policy's best new candidate only where that candidate's "
                                            "exploration score (e.g. AGE's gated f(h')) is at least (1 - budget) "
                                            "x the CTR model's prediction for the candidate it displaces, else "
                                            "that candidate keeps the slot; 1 = always explore (a reserved slot), "
                                            "0 = only where the exploration score reaches that prediction")
    online_candidates: int = opt(40, "online: candidates per request retrieved from the older videos, drawn by "
                                     "popularity (1 + clicks so far)")
    online_new_candidates: int = opt(10, "online: candidates per request drawn uniformly from the new videos")
    online_warmup: int = opt(20_000, "online: uniformly random exposures of the initial catalogue that the CTR model "
                                     "first trains on (day -1)")
    online_epochs: int = opt(2, "online: passes over each day's exposures at the daily retrain (and the warm-up)")
    online_fair: int = opt(30, "online: exposures that count as a fair amount; new-item coverage = share of the new "
                               "videos that reach it within explore.online_new_days days of arriving")
    online_good: float = opt(0.2, "online: the top share of new videos by ground-truth appeal (expected watch time "
                                  "over a fixed sample of users, World.expected) that count as good")
    online_codebook: int = opt(32, "online: codes per level of the two-level cold-start tokenizer fitted on the "
                                   "initial catalogue's content vectors (at most explore.online_initial)")
    online_new_appeal: float = opt(0.0, "online: how much better the new videos are than the catalogue (a "
                                        "freshness effect; the world has none of its own): 0 = the videos that "
                                        "arrive are a random draw of the world's, like the catalogue; s > 0 draws "
                                        "them with weights exp(s * z), z = a video's standardised ground-truth "
                                        "appeal, so better videos arrive more often (the catalogue stays a random "
                                        "draw)")


@dataclass
class EdgeConfig:
    """Training across edge devices (``onerec edge``, ``onerec.edge``): E-Tree against FedAvg, gossip learning,
    local-only and centralised training, SASRec or the generator on every device, in the single-process
    simulation or, under ``torchrun``, one device a process."""

    model: str = opt("sasrec", "the model on every device: sasrec (eval.sasrec's SASRec, needs only the data "
                               "stage) | generator (the run's model.* generator on its semantic IDs, trained by "
                               "the project's training step and scored by beam search: needs `onerec tokenize "
                               "RUN` first, slower)", choices=["sasrec", "generator"])
    schemes: list[str] = opt(["etree", "fedavg", "gossip", "local", "central"],
                             "schemes to run: etree, fedavg, gossip, local, central")
    n_devices: int = opt(100, "edge devices the run's users are partitioned over (under torchrun: one a process, "
                              "so --nproc_per_node must equal it)")
    partition: str = opt("noniid", "noniid: a Dirichlet split over user clusters (the simulated world's dominant "
                                   "interests) | iid: users dealt at random", choices=["noniid", "iid"])
    alpha: float = opt(0.3, "noniid: Dirichlet concentration (smaller: each device holds fewer clusters)")
    n_clusters: int = opt(6, "noniid: user clusters (dominant topic mod n_clusters)")
    min_users: int = opt(5, "noniid: users every device holds at least")
    grouping: str = opt("kma", "E-Tree's level-1 groups: kma (near devices, each group's data balanced by model "
                               "signatures) | similar (near devices with alike models) | distance | random",
                        choices=["kma", "distance", "random", "similar"])
    kma_balance: float = opt(1.0, "KMA: weight of the group-data-balance term against the distance term")
    group_size: int = opt(10, "devices per level-1 group")
    public_nodes: int = opt(0, "E-Tree's public nodes: devices of other groups that each level-1 group also takes "
                               "in (the nearest to its head), carrying models between groups; 0: none")
    fanout: list[int] = opt([], "children per node on the levels between the groups and the root")
    periods: list[int] = opt([5, 20], "local steps between aggregations, per tree level (each a multiple of the "
                                      "one below); FedAvg and gossip exchange every periods[0] steps")
    local_steps: int = opt(60, "local steps per device over the run")
    batch_size: int = opt(16, "sequences per local step")
    lr: float | None = opt(None, "learning rate on every device (Adam for SASRec, AdamW for the generator); null: "
                                 "the model's own, 1e-2 for SASRec (the edge studies' rate, not eval.sasrec.lr) and "
                                 "train.lr for the generator")
    optimizer: str = opt("adam", "each device's optimizer (and centralised training's): adam (AdamW with "
                                 "train.weight_decay for the generator) | sgd (plain SGD, FedAvg's local update; needs "
                                 "a far larger edge.lr)", choices=["adam", "sgd"])
    server_lr: float | None = opt(None, "null: the tree's top (E-Tree's root, FedAvg's server) takes the plain "
                                        "average; a rate: it moves the global model by Adam's step on (global - "
                                        "average) instead (FedAdam, Reddi et al. 2021; not in E-Tree's paper)")
    group_lr: float | None = opt(None, "null: E-Tree's aggregators below the root take the plain average; a rate: "
                                       "each (groups, middle levels) moves its model by Adam's step on (its model - "
                                       "its devices' average) at its rounds, with its own Adam state (a "
                                       "hierarchical FedAdam; FedAvg has no such level)")
    gossip_peers: int = opt(1, "gossip: random peers each device averages with per exchange")
    eval_every: int = opt(20, "local steps between points of the accuracy curve")
    step_ms: float = opt(20.0, "simulated time of one local step (for the simulated clock)")
    seed: int = opt(0, "random seed of the partition, positions, initial weights and batches")


# ------------------------------------------------------------------------------ run
@dataclass
class RunConfig:
    """Everything one pipeline run needs; each CLI verb reads the sections it uses."""

    data: DataConfig = section(DataConfig, "dataset and split")
    content: ContentConfig = section(ContentConfig, "item content vectors")
    tokenizer: TokenizerConfig = section(TokenizerConfig, "semantic-ID tokenizer")
    model: ModelConfig = section(ModelConfig, "generator architecture")
    train: TrainConfig = section(TrainConfig, "training loop")
    generate: GenerateConfig = section(GenerateConfig, "beam search")
    eval: EvalConfig = section(EvalConfig, "evaluation")
    serve: ServeConfig = section(ServeConfig, "recommendation service")
    reward: RewardConfig = section(RewardConfig, "P-Score reward model")
    align: AlignConfig = section(AlignConfig, "preference alignment")
    explore: ExploreConfig = section(ExploreConfig, "exploration for new items (AGE): its replay and online run")
    edge: EdgeConfig = section(EdgeConfig, "training across edge devices: E-Tree, FedAvg, gossip, local, central")


# ------------------------------------------------------------------ load and override
def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def config_differences(a: dict[str, Any], b: dict[str, Any], prefix: str = "",
                       skip: tuple[str, ...] = ()) -> list[str]:
    """Dotted names (under ``prefix``) of the fields whose values differ between two config dicts (:func:`to_dict`
    of a config or a section, or a saved config.yaml), sections compared field by field; top-level sections in
    ``skip`` left out. A field that only one side has was added to onerec after the other was written (new fields
    default to the old behaviour), so it is not a difference."""
    out = []
    for key in sorted(set(a) & set(b)):
        if not prefix and key in skip:
            continue
        va, vb = a[key], b[key]
        if isinstance(va, dict) and isinstance(vb, dict):
            out += config_differences(va, vb, f"{prefix}{key}.")
        elif va != vb:
            out.append(prefix + key)
    return out


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _nearest(name: str, options: list[str]) -> str:
    close = difflib.get_close_matches(name, options, n=1, cutoff=0.0)
    return f" Did you mean '{close[0]}'?" if close else ""


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            return None
        return _coerce(value, args[0], key)
    if origin is list:
        (inner,) = typing.get_args(tp)
        if isinstance(value, str):
            value = yaml.safe_load(value) if value.startswith("[") else [v for v in value.split(",") if v]
        if not isinstance(value, (list, tuple)):
            value = [value]
        return [_coerce(v, inner, key) for v in value]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}' is a mapping; set '{key}.<name>=...'")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}' is a section; give a mapping, or set '{key}.<field>=...'")
        return from_dict(tp, value, prefix=key + ".")
    try:
        if tp is bool:
            if isinstance(value, str):
                low = value.lower()
                if low in ("true", "1", "yes", "on"):
                    return True
                if low in ("false", "0", "no", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        if tp is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(float(value)) if isinstance(value, str) else int(value)
        if tp is float:
            return float(value)
        if tp is str:
            return str(value).lower() if isinstance(value, bool) else str(value)  # YAML's `on: true`, read as text
    except (TypeError, ValueError):
        raise ConfigError(f"config key '{key}': cannot read {value!r} as {tp.__name__}") from None
    return value


def from_dict(cls: type[T], data: dict[str, Any], *, prefix: str = "") -> T:
    """Build ``cls`` from a (possibly partial) mapping; unknown keys are errors."""
    cfg = cls()
    _update(cfg, data, prefix)
    return cfg


def _update(cfg: Any, data: dict[str, Any], prefix: str) -> None:
    types_ = _field_types(type(cfg))
    for key, value in (data or {}).items():
        if key not in types_:
            near = _nearest(key, list(types_)).replace("mean '", f"mean '{prefix}")
            raise ConfigError(f"unknown config key '{prefix}{key}'.{near}")
        tp = types_[key]
        if dataclasses.is_dataclass(tp) and isinstance(value, dict):
            _update(getattr(cfg, key), value, prefix + key + ".")
        elif typing.get_origin(tp) is dict and isinstance(value, dict):
            getattr(cfg, key).update(value)  # dotted overrides add keys to a mapping field
        else:
            setattr(cfg, key, _coerce(value, tp, prefix + key))
        _check_choice(cfg, key, prefix)


def check_choices(cfg: Any, prefix: str = "") -> None:
    """ConfigError if a field of the config dataclass ``cfg`` holds a value outside its ``choices``: for configs
    built in code (``TrainConfig(precision=...)``), which skip the checks that loading and overrides make."""
    for f in dataclasses.fields(cfg):
        _check_choice(cfg, f.name, prefix)


def _check_choice(cfg: Any, key: str, prefix: str) -> None:
    f = {f.name: f for f in dataclasses.fields(cfg)}[key]
    choices = f.metadata.get("choices")
    value = getattr(cfg, key)
    if choices and value not in choices:
        raise ConfigError(f"config key '{prefix}{key}' = {value!r} is not one of {choices}")


def apply_overrides(cfg: Any, overrides: list[str]) -> Any:
    """Apply ``a.b=value`` strings in place (values parsed as YAML scalars) and return cfg."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like key=value, e.g. train.lr=3e-4")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        nested: dict[str, Any] = {}
        cur = nested
        for p in parts[:-1]:
            cur = cur.setdefault(p, {})
        try:
            parsed = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            parsed = raw
        cur[parts[-1]] = parsed
        _update(cfg, nested, "")
    return cfg


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def load_config(preset: str | None = None, file: str | Path | None = None,
                overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Defaults <- preset <- YAML file <- overrides."""
    cfg = RunConfig()
    if preset:
        if isinstance(preset, Path) or "/" in preset or preset.endswith((".yaml", ".yml")):
            raise ConfigError(f"'{preset}' looks like a file, but the first argument names a built-in preset "
                              f"({', '.join(preset_names())}). Fix: load_config(file='{preset}')")
        path = PRESET_DIR / f"{preset}.yaml"
        if not path.exists():
            raise ConfigError(f"unknown preset '{preset}'.{_nearest(preset, preset_names())} "
                              f"Presets: {', '.join(preset_names())}")
        _update(cfg, yaml.safe_load(path.read_text()) or {}, "")
    if file:
        from onerec.io import read_yaml

        _update(cfg, read_yaml(file) or {}, "")
    apply_overrides(cfg, list(overrides))
    return cfg


def config_get(cfg: Any, key: str) -> Any:
    """The value of the dotted config key ``key`` (``train.lr``) of a config dataclass."""
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def describe(cls: type = RunConfig, prefix: str = "") -> list[tuple[str, str, str]]:
    """(key, default, help) for every leaf field, for ``--help-config``."""
    rows: list[tuple[str, str, str]] = []
    inst = cls()
    for f in dataclasses.fields(cls):
        value = getattr(inst, f.name)
        if dataclasses.is_dataclass(value):
            rows.extend(describe(type(value), prefix + f.name + "."))
        else:
            rows.append((prefix + f.name, repr(value), f.metadata.get("help", "")))
    return rows
