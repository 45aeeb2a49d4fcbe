"""
HTTP helpers shared by the Engine.IO endpoint and the web resources: CORS
and query-string parsing. Neutral: this package imports neither.
"""

from .cors import CORSPolicy
from .query import QueryError, parseQuery

__all__ = ["CORSPolicy", "QueryError", "parseQuery"]
