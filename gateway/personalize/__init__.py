"""Personalization: compiling a job's templates and rendering them per recipient."""
