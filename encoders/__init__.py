
# --- image side: image encoders, image->text adapter, bridge, fusion (loaded lazily: `import encoders`
# must stay cheap and must not import torch)
_IMAGE_EXPORTS: dict[str, str] = {
    "load_image_encoder": "encoders.image", "EfficientNetLiteEncoder": "encoders.image",
    "OpenClipEncoder": "encoders.image", "OpenClipTextEncoder": "encoders.image",
    "ModelUnavailableError": "encoders.image", "open_image": "encoders.image",
    "ImageTextAdapter": "encoders.adapter", "AdapterConfig": "encoders.adapter",
    "train_adapter": "encoders.adapter_training", "fit_catalog_adapter": "encoders.adapter_training",
    "CatalogProduct": "encoders.adapter_training", "augment": "encoders.augment", "render_views": "encoders.augment",
    "ClassNameBridge": "encoders.bridge", "MultimodalEncoder": "encoders.multimodal", "ModalityMix": "encoders.multimodal",
}


# --- text side: text encoders by spec, the e5 rebuild, the cross-lingual head, batch embedding + cache
_TEXT_EXPORTS: dict[str, str] = {
    "load_text_encoder": "encoders.text", "TextEncoderError": "encoders.text",
    "USEEncoder": "encoders.text", "ConcatEncoder": "encoders.text",
    "SentenceTransformerEncoder": "encoders.text", "encoder_version": "encoders.text",
    "BatchEmbedder": "encoders.batch", "EmbedStats": "encoders.batch", "EmbeddingCache": "encoders.cache",
    "torch_threads": "encoders.threads", "l2_normalize": "encoders.base",
}


def __getattr__(name: str):
    if name in _IMAGE_EXPORTS:
        import importlib

        return getattr(importlib.import_module(_IMAGE_EXPORTS[name]), name)
    if name in _TEXT_EXPORTS:
        import importlib

        return getattr(importlib.import_module(_TEXT_EXPORTS[name]), name)
    raise AttributeError(f"module 'encoders' has no attribute {name!r}")
