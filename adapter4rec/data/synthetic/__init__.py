"""Synthetic data for tests and the demo: text domains (``text``), item images (``images``), and
small random-weight model folders (``models``). See ``text`` for the world the data comes from."""
from .images import (draw_item_image, make_image_domain, make_image_transfer_pair, topic_look,
                     write_item_images)
from .models import write_tiny_bert, write_tiny_vit
from .text import FILLER, TOPICS, make_domain, make_transfer_pair, vocabulary

__all__ = ["TOPICS", "FILLER", "vocabulary", "make_domain", "make_transfer_pair", "make_image_domain",
           "make_image_transfer_pair", "topic_look", "draw_item_image", "write_item_images",
           "write_tiny_bert", "write_tiny_vit"]
