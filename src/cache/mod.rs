//! The semantic cache: per key set and customer instance, encrypted at rest, served when every upstream fails, when
//! the key set is overloaded, or first (`cache_first`), and filled by write-through off the request path.

pub mod canonical;
pub mod embed;
pub mod eval;
pub mod guard;
