//! The Palaver peer: identity on disk and the command line; the daemon, its JSON-RPC socket and
//! the terminal UI grow here.

pub mod cli;
pub mod home;
