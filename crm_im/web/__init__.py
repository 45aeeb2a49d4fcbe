"""
The HTTP side: status resources, the files route and the root tree.
"""
