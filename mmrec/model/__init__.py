"""The fusion transformer and everything that trains it: the model (`transformer`), its event features
(`features`), loss, training loop, checkpoints, the content vectors it reads (`vectors`), and
`FusionRecommender`, the model behind the `evaluation.Recommender` protocol."""
from mmrec.model.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from mmrec.model.features import (
    FIRST_GAP,
    PAD_GAP,
    ZERO_GAP,
    EventCodes,
    ItemSide,
    gap_buckets,
    gather,
    kind_codes,
    market_codes,
    training_windows,
    value_codes,
)
from mmrec.model.loss import next_item_loss
from mmrec.model.recommender import FusionRecommender
from mmrec.model.training import TrainConfig, train_model
from mmrec.model.transformer import FusionConfig, FusionTransformer

__all__ = [
    "FusionConfig", "FusionTransformer", "TrainConfig", "train_model", "FusionRecommender", "next_item_loss",
    "EventCodes", "ItemSide", "gather", "training_windows", "gap_buckets", "kind_codes", "value_codes",
    "market_codes", "PAD_GAP", "FIRST_GAP", "ZERO_GAP", "Checkpoint", "save_checkpoint", "load_checkpoint",
]
