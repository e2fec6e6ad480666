//! Placeholder: filled by the deploy/ops work.
