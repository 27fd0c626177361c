"""A person in the loop: a saved gallery index (:mod:`dlgpr.app.index`), the :class:`PlaceFinder`
session API (:mod:`dlgpr.app.finder`) and its terminal front end (``python -m dlgpr.app --terminal``)."""

from dlgpr.app.finder import CandidateView, FinderConfig, FinderSession, PlaceFinder
from dlgpr.app.index import GalleryIndex, IndexMismatchError, build_index, retriever_fingerprint

__all__ = [
    "CandidateView", "FinderConfig", "FinderSession", "GalleryIndex", "IndexMismatchError", "PlaceFinder", "build_index", "retriever_fingerprint",
]
