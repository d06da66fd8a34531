"""Data: the task registry, file readers, seeded splits, tokenization and its cache, batches and samplers,
and the one LightningDataModule (:class:`DynTokDataModule`)."""

from dyntok.data.batches import BucketBatchSampler, PadCollator, SortedBatchSampler, SpanSplit, TokenizedSplit
from dyntok.data.datamodule import DynTokDataModule
from dyntok.data.readers import RawSplit, read_glue_tsv, read_movie_reviews
from dyntok.data.splits import stratified_pick

__all__ = ["BucketBatchSampler", "DynTokDataModule", "PadCollator", "RawSplit", "SortedBatchSampler", "SpanSplit",
           "TokenizedSplit", "read_glue_tsv", "read_movie_reviews", "stratified_pick"]
