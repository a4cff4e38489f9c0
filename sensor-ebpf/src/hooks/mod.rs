//! One module per hook family. Each program is a thin entry that calls a fallible body and
//! counts its error; the bodies are shared between a capability's preferred hook and its
//! fallbacks.

pub mod bench;
pub mod file;
pub mod net;
pub mod process;
pub mod tls;
