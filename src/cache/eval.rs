//! cache-eval (to be written).
