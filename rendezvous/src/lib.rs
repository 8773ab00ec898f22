//! The Palaver rendezvous server, and the libp2p plumbing the node shares with it.

pub mod frame_codec;

pub use frame_codec::FrameCodec;
