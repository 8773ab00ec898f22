//! Provisional: the data types of the end-to-end crypto module, which lands with its operations.

pub mod x3dh {
    use ed25519_dalek::{Signature, VerifyingKey};
    use serde::{Deserialize, Serialize};

    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct SignedPrekey {
        pub id: u32,
        pub key: x25519_dalek::PublicKey,
        pub signature: Signature,
    }

    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct OneTimePrekey {
        pub id: u32,
        pub key: x25519_dalek::PublicKey,
    }

    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct PrekeyBundle {
        pub identity: VerifyingKey,
        pub signed_prekey: SignedPrekey,
        pub one_time_prekey: Option<OneTimePrekey>,
    }

    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct PrekeyUpload {
        pub identity: VerifyingKey,
        pub signed_prekey: SignedPrekey,
        pub one_time_prekeys: Vec<OneTimePrekey>,
    }

    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct SessionInit {
        pub ephemeral: x25519_dalek::PublicKey,
        pub signed_prekey_id: u32,
        pub one_time_prekey_id: Option<u32>,
    }
}

pub mod ratchet {
    use serde::{Deserialize, Serialize};

    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Header {
        pub dh: x25519_dalek::PublicKey,
        pub previous_chain_len: u32,
        pub index: u32,
    }

    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct RatchetMessage {
        pub init: Option<super::x3dh::SessionInit>,
        pub header: Header,
        #[serde(with = "serde_bytes")]
        pub ciphertext: Vec<u8>,
    }
}

pub mod sender_key {
    use ed25519_dalek::VerifyingKey;
    use serde::{Deserialize, Serialize};

    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct SenderKeyDistribution {
        pub key_id: u32,
        pub index: u32,
        pub chain_key: [u8; 32],
        pub signing_key: VerifyingKey,
    }

    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct SenderKeyMessage {
        pub key_id: u32,
        pub index: u32,
        #[serde(with = "serde_bytes")]
        pub ciphertext: Vec<u8>,
    }
}

pub mod room {
    use ed25519_dalek::{Signature, VerifyingKey};
    use serde::{Deserialize, Serialize};

    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct MembershipUpdate {
        pub room: [u8; 32],
        pub epoch: u64,
        pub members: Vec<VerifyingKey>,
        pub owner: VerifyingKey,
        pub signature: Signature,
    }
}
