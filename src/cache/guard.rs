//! Hit guards (to be written).
