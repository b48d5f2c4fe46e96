"""The one item path: the recipe that turns an item into what the encoders see, the `ItemEncoder`, the default text encoder and image adapter, and batch embedding (`mmrec.embed`)."""
