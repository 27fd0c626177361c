"""A person in the loop: a saved gallery index (:mod:`dlgpr.app.index`), the :class:`PlaceFinder`
session API (:mod:`dlgpr.app.finder`), its web page (:mod:`dlgpr.app.web`, Gradio: ``python -m
dlgpr.app``; imported only when served) with the try-it log (:mod:`dlgpr.app.tryit`), and its
terminal front end (``python -m dlgpr.app --terminal``)."""

from dlgpr.app.finder import CandidateView, FinderConfig, FinderSession, PlaceFinder
from dlgpr.app.index import GalleryIndex, IndexMismatchError, build_index, retriever_fingerprint

__all__ = [
    "CandidateView", "FinderConfig", "FinderSession", "GalleryIndex", "IndexMismatchError", "PlaceFinder", "build_index", "retriever_fingerprint",
]
