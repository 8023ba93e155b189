"""Configuration: the validated config models, YAML/secret-file reading, env and flag layering.

May import `core`.
"""
