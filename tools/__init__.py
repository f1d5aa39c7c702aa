"""Instructor tools for running the lab as a course (see docs/course.md)."""
