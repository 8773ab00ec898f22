//! Helpers for the workspace-level tests.
