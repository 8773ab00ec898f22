//! Fixed and generated values of every wire type, shared by the wire tests.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use palaver_protocol::crypto::file::FileKey;
use palaver_protocol::crypto::ratchet::{Header, RatchetMessage};
use palaver_protocol::crypto::room::MembershipUpdate;
use palaver_protocol::crypto::sender_key::{SenderKeyDistribution, SenderKeyMessage};
use palaver_protocol::crypto::x3dh::{
    OneTimePrekey, PrekeyBundle, PrekeyUpload, SessionInit, SignedPrekey,
};
use palaver_protocol::delivery::Stamp;
use palaver_protocol::identity::devices::{Device, DeviceList, SignedDeviceList};
use palaver_protocol::rendezvous::discovery::Namespace;
use palaver_protocol::wire::rendezvous::{AccountDevices, SealedLink};
use palaver_protocol::wire::*;
use palaver_protocol::{Identity, MessageId, RoomId, RoomName, Signature, SigningKey, UserName};
use proptest::prelude::*;

pub fn identity(seed: u8) -> Identity {
    Identity::from_secret_bytes(&[seed; 32])
}

pub fn x25519(seed: u8) -> x25519_dalek::PublicKey {
    x25519_dalek::PublicKey::from([seed; 32])
}

pub fn direct_envelope(from: u8, to: u8, text: &[u8]) -> Envelope {
    let body = Body::Direct(DirectMessage {
        sender: identity(from).public(),
        recipient: identity(to).public(),
        message: RatchetMessage {
            init: Some(SessionInit {
                ephemeral: x25519(9),
                signed_prekey_id: 1,
                one_time_prekey_id: Some(7),
            }),
            header: Header {
                dh: x25519(3),
                previous_chain_len: 2,
                index: 5,
            },
            ciphertext: text.to_vec(),
        },
    });
    Envelope::sign(body, identity(from).signing_key()).unwrap()
}

pub fn room_envelope(from: u8, sender_key: u8) -> Envelope {
    let signing = SigningKey::from_bytes(&[sender_key; 32]);
    let body = Body::Room(RoomMessage {
        room: RoomId([4; 32]),
        sender: identity(from).public(),
        signing_key: signing.verifying_key(),
        message: SenderKeyMessage {
            key_id: 2,
            epoch: 3,
            index: 40,
            ciphertext: vec![0xab; 24],
        },
    });
    Envelope::sign(body, &signing).unwrap()
}

pub fn membership() -> MembershipUpdate {
    MembershipUpdate {
        room: [4; 32],
        epoch: 3,
        keys_from: 2,
        members: vec![identity(1).public(), identity(2).public()],
        owner: identity(1).public(),
        signature: Signature::from_bytes(&[6; 64]),
    }
}

pub fn signed_prekey() -> SignedPrekey {
    SignedPrekey {
        id: 1,
        key: x25519(5),
        signature: Signature::from_bytes(&[8; 64]),
    }
}

pub fn user(name: &str) -> UserName {
    UserName::new(name).unwrap()
}

pub fn presence() -> PresenceRecord {
    PresenceRecord {
        name: user("bob"),
        state: PresenceState::Away,
        last_seen_ms: Some(1_700_000_000_000),
    }
}

/// One fixed value of every type and variant, named, for the byte snapshots.
pub fn fixed_frames() -> Vec<(&'static str, Vec<u8>)> {
    use palaver_protocol::codec::encode;
    let bundle = PrekeyBundle {
        identity: identity(2).public(),
        signed_prekey: signed_prekey(),
        one_time_prekey: Some(OneTimePrekey {
            id: 9,
            key: x25519(6),
        }),
    };
    let content = |payload| Content {
        sent_at_ms: 1_700_000_000_123,
        stamp: Stamp(42),
        seq: 7,
        payload,
    };
    vec![
        (
            "envelope_direct",
            encode(&direct_envelope(1, 2, b"ciphertext")).unwrap(),
        ),
        ("envelope_room", encode(&room_envelope(1, 10)).unwrap()),
        (
            "content_text",
            encode(&content(Payload::Text("hello, bob".into()))).unwrap(),
        ),
        (
            "content_receipt",
            encode(&content(Payload::Receipt(vec![MessageId([1; 32])]))).unwrap(),
        ),
        (
            "content_invite",
            encode(&content(Payload::RoomInvite(RoomInvite {
                room: RoomId([4; 32]),
                name: RoomName::new("general").unwrap(),
                membership: membership(),
                invite_secret: Some([5; 32]),
            })))
            .unwrap(),
        ),
        (
            "content_sender_key",
            encode(&content(Payload::SenderKey {
                room: RoomId([4; 32]),
                distribution: SenderKeyDistribution {
                    key_id: 2,
                    epoch: 3,
                    index: 0,
                    chain_key: [7; 32],
                    signing_key: SigningKey::from_bytes(&[10; 32]).verifying_key(),
                },
            }))
            .unwrap(),
        ),
        (
            "content_membership",
            encode(&content(Payload::Membership(membership()))).unwrap(),
        ),
        (
            "content_leave",
            encode(&content(Payload::Leave {
                room: RoomId([4; 32]),
            }))
            .unwrap(),
        ),
        (
            "content_key_request",
            encode(&content(Payload::KeyRequest {
                room: RoomId([5; 32]),
            }))
            .unwrap(),
        ),
        (
            "content_membership_request",
            encode(&content(Payload::MembershipRequest {
                room: RoomId([5; 32]),
            }))
            .unwrap(),
        ),
        (
            "content_file",
            encode(&content(Payload::File(FileOffer {
                transfer: TransferId([5; 16]),
                name: "notes.txt".into(),
                size: 70_000,
                mime: "text/plain".into(),
                sha256: [6; 32],
                key: FileKey::from_bytes([7; 32]),
            })))
            .unwrap(),
        ),
        (
            "content_file_whole",
            encode(&content(Payload::FileWhole {
                offer: FileOffer {
                    transfer: TransferId([5; 16]),
                    name: "a.txt".into(),
                    size: 3,
                    mime: "text/plain".into(),
                    sha256: [6; 32],
                    key: FileKey::from_bytes([7; 32]),
                },
                bytes: b"abc".to_vec(),
            }))
            .unwrap(),
        ),
        (
            "content_file_declined",
            encode(&content(Payload::FileDeclined {
                file: MessageId([4; 32]),
                reason: "rejected".into(),
            }))
            .unwrap(),
        ),
        (
            "file_fetch",
            encode(&FileFetch {
                transfer: TransferId([8; 16]),
                from_chunk: 3,
            })
            .unwrap(),
        ),
        (
            "file_chunk",
            encode(&FileFrame::Chunk {
                index: 3,
                sealed: vec![9; 20],
            })
            .unwrap(),
        ),
        (
            "rendezvous_register",
            encode(&RendezvousRequest::Register {
                name: user("alice"),
                token: Some("s3cret".into()),
            })
            .unwrap(),
        ),
        (
            "rendezvous_login",
            encode(&RendezvousRequest::Login {
                name: user("alice"),
                instance: 7,
            })
            .unwrap(),
        ),
        (
            "rendezvous_publish_prekeys",
            encode(&RendezvousRequest::PublishPrekeys(Box::new(PrekeyUpload {
                identity: identity(1).public(),
                signed_prekey: signed_prekey(),
                one_time_prekeys: vec![OneTimePrekey {
                    id: 9,
                    key: x25519(6),
                }],
            })))
            .unwrap(),
        ),
        (
            "rendezvous_fetch_prekeys",
            encode(&RendezvousRequest::FetchPrekeys { name: user("bob") }).unwrap(),
        ),
        (
            "rendezvous_heartbeat",
            encode(&RendezvousRequest::Heartbeat {
                state: PresenceState::Online,
            })
            .unwrap(),
        ),
        (
            "rendezvous_deposit",
            encode(&RendezvousRequest::Deposit {
                to: user("bob"),
                envelope: Box::new(direct_envelope(1, 2, b"x")),
            })
            .unwrap(),
        ),
        (
            "rendezvous_ack_mail",
            encode(&RendezvousRequest::AckMail {
                ids: vec![MessageId([3; 32])],
            })
            .unwrap(),
        ),
        (
            "rendezvous_logged_in",
            encode(&RendezvousResponse::LoggedIn {
                name: user("alice"),
                mail_waiting: 3,
                one_time_prekeys_left: 90,
            })
            .unwrap(),
        ),
        (
            "rendezvous_prekeys",
            encode(&RendezvousResponse::Prekeys(Box::new(bundle))).unwrap(),
        ),
        (
            "rendezvous_mail",
            encode(&RendezvousResponse::Mail {
                items: vec![MailItem {
                    envelope: direct_envelope(1, 2, b"x"),
                    deposited_at_ms: 5,
                }],
                remaining: 0,
            })
            .unwrap(),
        ),
        (
            "rendezvous_refused",
            encode(&RendezvousResponse::Refused(Refusal {
                reason: RefusalReason::NameTaken,
                detail: "alice is bound to another key".into(),
            }))
            .unwrap(),
        ),
        (
            "rendezvous_register_discovery",
            encode(&RendezvousRequest::RegisterDiscovery {
                namespace: Namespace::Peer(identity(1).peer_id()),
                record: SignedPeerRecord(vec![9; 12]),
                ttl_secs: 7200,
            })
            .unwrap(),
        ),
        (
            "rendezvous_discover_room",
            encode(&RendezvousRequest::Discover {
                namespace: Namespace::Room(RoomId([6; 32])),
            })
            .unwrap(),
        ),
        (
            "rendezvous_discovered",
            encode(&RendezvousResponse::Discovered(vec![SignedPeerRecord(
                vec![8; 5],
            )]))
            .unwrap(),
        ),
        (
            "rendezvous_publish_devices",
            encode(&RendezvousRequest::PublishDevices(Box::new(device_list(
                1,
                &[2],
            ))))
            .unwrap(),
        ),
        (
            "server_push_presence",
            encode(&ServerPush::Presence(presence())).unwrap(),
        ),
        (
            "peer_deliver",
            encode(&PeerRequest::Deliver(Box::new(room_envelope(1, 10)))).unwrap(),
        ),
        (
            "peer_gap_fill",
            encode(&PeerRequest::GapFill(GapFillRequest {
                room: RoomId([4; 32]),
                cursors: vec![SenderCursor {
                    sender: identity(1).public(),
                    have_through: 12,
                }],
                max: 64,
            }))
            .unwrap(),
        ),
        (
            "peer_stored",
            encode(&PeerResponse::Stored {
                id: MessageId([3; 32]),
            })
            .unwrap(),
        ),
    ]
}

/// The device list of account `seed`, at version 1, with these linked device seeds.
pub fn device_list(seed: u8, linked: &[u8]) -> SignedDeviceList {
    let account = identity(seed);
    let mut list = DeviceList::single(account.public());
    list.version = 1;
    for &device in linked {
        list.devices.push(Device::bind(
            &identity(device),
            &account.public(),
            format!("device {device}"),
            1_700_000_000_000,
        ));
    }
    SignedDeviceList::sign(list, &account).unwrap()
}

// ---- proptest strategies -------------------------------------------------------------------

pub fn any_device_list() -> impl Strategy<Value = SignedDeviceList> {
    (any::<u8>(), proptest::collection::vec(any::<u8>(), 0..4)).prop_map(|(seed, mut linked)| {
        linked.sort();
        linked.dedup();
        linked.retain(|&d| d != seed);
        device_list(seed, &linked)
    })
}

pub fn any_identity() -> impl Strategy<Value = Identity> {
    any::<[u8; 32]>().prop_map(|s| Identity::from_secret_bytes(&s))
}

pub fn any_key() -> impl Strategy<Value = ed25519_dalek::VerifyingKey> {
    any_identity().prop_map(|i| i.public())
}

pub fn any_signature() -> impl Strategy<Value = Signature> {
    (any::<[u8; 32]>(), any::<[u8; 32]>()).prop_map(|(a, b)| {
        let mut bytes = [0u8; 64];
        bytes[..32].copy_from_slice(&a);
        bytes[32..].copy_from_slice(&b);
        Signature::from_bytes(&bytes)
    })
}

pub fn any_x25519() -> impl Strategy<Value = x25519_dalek::PublicKey> {
    any::<[u8; 32]>().prop_map(x25519_dalek::PublicKey::from)
}

pub fn any_user() -> impl Strategy<Value = UserName> {
    "[a-z0-9_][a-z0-9_.-]{0,31}".prop_map(|n| UserName::new(n).unwrap())
}

pub fn any_bytes() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..200)
}

pub fn any_ratchet_message() -> impl Strategy<Value = RatchetMessage> {
    (
        proptest::option::of((
            any_x25519(),
            any::<u32>(),
            proptest::option::of(any::<u32>()),
        )),
        any_x25519(),
        any::<u32>(),
        any::<u32>(),
        any_bytes(),
    )
        .prop_map(|(init, dh, pn, n, ciphertext)| RatchetMessage {
            init: init.map(
                |(ephemeral, signed_prekey_id, one_time_prekey_id)| SessionInit {
                    ephemeral,
                    signed_prekey_id,
                    one_time_prekey_id,
                },
            ),
            header: Header {
                dh,
                previous_chain_len: pn,
                index: n,
            },
            ciphertext,
        })
}

pub fn any_envelope() -> impl Strategy<Value = Envelope> {
    let direct =
        (any_identity(), any_key(), any_ratchet_message()).prop_map(|(from, to, message)| {
            let body = Body::Direct(DirectMessage {
                sender: from.public(),
                recipient: to,
                message,
            });
            Envelope::sign(body, from.signing_key()).unwrap()
        });
    let room = (
        any_identity(),
        any_key(),
        any::<[u8; 32]>(),
        any::<u32>(),
        any::<u64>(),
        any::<u32>(),
        any_bytes(),
    )
        .prop_map(
            |(sender_key, sender, room, key_id, epoch, index, ciphertext)| {
                let body = Body::Room(RoomMessage {
                    room: RoomId(room),
                    sender,
                    signing_key: sender_key.public(),
                    message: SenderKeyMessage {
                        key_id,
                        epoch,
                        index,
                        ciphertext,
                    },
                });
                Envelope::sign(body, sender_key.signing_key()).unwrap()
            },
        );
    prop_oneof![direct, room]
}

pub fn any_membership() -> impl Strategy<Value = MembershipUpdate> {
    (
        any::<[u8; 32]>(),
        any::<u64>(),
        any::<u64>(),
        proptest::collection::vec(any_key(), 0..5),
        any_key(),
        any_signature(),
    )
        .prop_map(
            |(room, epoch, keys_from, members, owner, signature)| MembershipUpdate {
                room,
                epoch,
                keys_from,
                members,
                owner,
                signature,
            },
        )
}

pub fn any_payload() -> impl Strategy<Value = Payload> {
    prop_oneof![
        ".{0,100}".prop_map(Payload::Text),
        proptest::collection::vec(any::<[u8; 32]>().prop_map(MessageId), 0..5)
            .prop_map(Payload::Receipt),
        (
            any::<[u8; 32]>(),
            "[a-z0-9_][a-z0-9_.-]{0,63}",
            any_membership(),
            proptest::option::of(any::<[u8; 32]>())
        )
            .prop_map(
                |(room, name, membership, invite_secret)| Payload::RoomInvite(RoomInvite {
                    room: RoomId(room),
                    name: RoomName::new(name).unwrap(),
                    membership,
                    invite_secret,
                })
            ),
        (
            any::<[u8; 32]>(),
            any::<u32>(),
            any::<u64>(),
            any::<u32>(),
            any::<[u8; 32]>(),
            any_key()
        )
            .prop_map(|(room, key_id, epoch, index, chain_key, signing_key)| {
                Payload::SenderKey {
                    room: RoomId(room),
                    distribution: SenderKeyDistribution {
                        key_id,
                        epoch,
                        index,
                        chain_key,
                        signing_key,
                    },
                }
            }),
        any_membership().prop_map(Payload::Membership),
        any::<[u8; 32]>().prop_map(|room| Payload::Leave { room: RoomId(room) }),
        any::<[u8; 32]>().prop_map(|room| Payload::KeyRequest { room: RoomId(room) }),
        any::<[u8; 32]>().prop_map(|room| Payload::MembershipRequest { room: RoomId(room) }),
        (
            any::<[u8; 16]>(),
            ".{0,40}",
            any::<u64>(),
            ".{0,20}",
            any::<[u8; 32]>(),
            any::<[u8; 32]>()
        )
            .prop_map(|(transfer, name, size, mime, sha256, key)| Payload::File(
                FileOffer {
                    transfer: TransferId(transfer),
                    name,
                    size,
                    mime,
                    sha256,
                    key: FileKey::from_bytes(key),
                }
            )),
        (
            any_user(),
            any_key(),
            any_message_id(),
            ".{0,40}",
            any::<u64>()
        )
            .prop_map(|(to, to_key, id, text, sent_at_ms)| Payload::Sent {
                to,
                to_key,
                id,
                text,
                sent_at_ms,
            }),
    ]
}

pub fn any_content() -> impl Strategy<Value = Content> {
    (any::<u64>(), any::<u64>(), any::<u64>(), any_payload()).prop_map(
        |(sent_at_ms, stamp, seq, payload)| Content {
            sent_at_ms,
            stamp: Stamp(stamp),
            seq,
            payload,
        },
    )
}

pub fn any_presence() -> impl Strategy<Value = PresenceRecord> {
    (
        any_user(),
        prop_oneof![
            Just(PresenceState::Online),
            Just(PresenceState::Away),
            Just(PresenceState::Offline)
        ],
        proptest::option::of(any::<u64>()),
    )
        .prop_map(|(name, state, last_seen_ms)| PresenceRecord {
            name,
            state,
            last_seen_ms,
        })
}

pub fn any_signed_prekey() -> impl Strategy<Value = SignedPrekey> {
    (any::<u32>(), any_x25519(), any_signature()).prop_map(|(id, key, signature)| SignedPrekey {
        id,
        key,
        signature,
    })
}

pub fn any_one_time() -> impl Strategy<Value = OneTimePrekey> {
    (any::<u32>(), any_x25519()).prop_map(|(id, key)| OneTimePrekey { id, key })
}

pub fn any_message_id() -> impl Strategy<Value = MessageId> {
    any::<[u8; 32]>().prop_map(MessageId)
}

pub fn any_rendezvous_request() -> impl Strategy<Value = RendezvousRequest> {
    prop_oneof![
        (any_user(), proptest::option::of(".{0,20}"))
            .prop_map(|(name, token)| RendezvousRequest::Register { name, token }),
        (any_user(), any::<u64>())
            .prop_map(|(name, instance)| RendezvousRequest::Login { name, instance }),
        (
            any_key(),
            any_signed_prekey(),
            proptest::collection::vec(any_one_time(), 0..4)
        )
            .prop_map(|(identity, signed_prekey, one_time_prekeys)| {
                RendezvousRequest::PublishPrekeys(Box::new(PrekeyUpload {
                    identity,
                    signed_prekey,
                    one_time_prekeys,
                }))
            }),
        proptest::collection::vec(any_one_time(), 0..4)
            .prop_map(RendezvousRequest::AddOneTimePrekeys),
        any_user().prop_map(|name| RendezvousRequest::FetchPrekeys { name }),
        proptest::collection::vec(any_user(), 0..4)
            .prop_map(|names| RendezvousRequest::Lookup { names }),
        prop_oneof![Just(PresenceState::Online), Just(PresenceState::Away)]
            .prop_map(|state| RendezvousRequest::Heartbeat { state }),
        proptest::collection::vec(any_user(), 0..4)
            .prop_map(|names| RendezvousRequest::SubscribePresence { names }),
        (any_user(), any_envelope()).prop_map(|(to, envelope)| RendezvousRequest::Deposit {
            to,
            envelope: Box::new(envelope)
        }),
        any::<u16>().prop_map(|max| RendezvousRequest::FetchMail { max }),
        proptest::collection::vec(any_message_id(), 0..4)
            .prop_map(|ids| RendezvousRequest::AckMail { ids }),
        proptest::collection::vec(any_key(), 0..4)
            .prop_map(|keys| RendezvousRequest::WhoIs { keys }),
        (any_namespace(), any_peer_record(), any::<u32>()).prop_map(
            |(namespace, record, ttl_secs)| RendezvousRequest::RegisterDiscovery {
                namespace,
                record,
                ttl_secs,
            }
        ),
        any_namespace().prop_map(|namespace| RendezvousRequest::UnregisterDiscovery { namespace }),
        any_namespace().prop_map(|namespace| RendezvousRequest::Discover { namespace }),
        any_device_list().prop_map(|list| RendezvousRequest::PublishDevices(Box::new(list))),
        proptest::collection::vec(any_user(), 0..4)
            .prop_map(|names| RendezvousRequest::FetchDevices { names }),
        (any::<[u8; 32]>(), any_bytes()).prop_map(|(slot, sealed)| RendezvousRequest::LinkPost {
            slot,
            sealed: SealedLink(sealed)
        }),
        any::<[u8; 32]>().prop_map(|slot| RendezvousRequest::LinkTake { slot }),
        (any_user(), any_key())
            .prop_map(|(name, device)| RendezvousRequest::FetchDevicePrekeys { name, device }),
    ]
}

pub fn any_namespace() -> impl Strategy<Value = Namespace> {
    prop_oneof![
        any::<[u8; 32]>()
            .prop_map(|seed| { Namespace::Peer(Identity::from_secret_bytes(&seed).peer_id()) }),
        any::<[u8; 32]>().prop_map(|id| Namespace::Room(RoomId(id))),
    ]
}

pub fn any_peer_record() -> impl Strategy<Value = SignedPeerRecord> {
    proptest::collection::vec(any::<u8>(), 0..64).prop_map(SignedPeerRecord)
}

pub fn any_refusal_reason() -> impl Strategy<Value = RefusalReason> {
    use RefusalReason::*;
    proptest::sample::select(vec![
        NameTaken,
        TokenRequired,
        BadToken,
        UnknownUser,
        NotYourName,
        NotLoggedIn,
        NoPrekeys,
        QuotaExceeded,
        TooLarge,
        RateLimited,
        Invalid,
        Unavailable,
        NotAllowed,
        InUse,
    ])
}

pub fn any_rendezvous_response() -> impl Strategy<Value = RendezvousResponse> {
    prop_oneof![
        any_user().prop_map(|name| RendezvousResponse::Registered { name }),
        (any_user(), any::<u32>(), any::<u32>()).prop_map(
            |(name, mail_waiting, one_time_prekeys_left)| {
                RendezvousResponse::LoggedIn {
                    name,
                    mail_waiting,
                    one_time_prekeys_left,
                }
            }
        ),
        Just(RendezvousResponse::Done),
        (
            any_key(),
            any_signed_prekey(),
            proptest::option::of(any_one_time())
        )
            .prop_map(|(identity, signed_prekey, one_time_prekey)| {
                RendezvousResponse::Prekeys(Box::new(PrekeyBundle {
                    identity,
                    signed_prekey,
                    one_time_prekey,
                }))
            }),
        proptest::collection::vec((any_user(), any_key(), any_presence()), 0..3).prop_map(
            |users| {
                RendezvousResponse::Users(
                    users
                        .into_iter()
                        .map(|(name, identity, presence)| UserRecord {
                            name,
                            identity,
                            presence,
                        })
                        .collect(),
                )
            }
        ),
        any_message_id().prop_map(|id| RendezvousResponse::Deposited { id }),
        (
            proptest::collection::vec((any_envelope(), any::<u64>()), 0..3),
            any::<u32>()
        )
            .prop_map(|(items, remaining)| {
                RendezvousResponse::Mail {
                    items: items
                        .into_iter()
                        .map(|(envelope, deposited_at_ms)| MailItem {
                            envelope,
                            deposited_at_ms,
                        })
                        .collect(),
                    remaining,
                }
            }),
        (any_refusal_reason(), ".{0,40}")
            .prop_map(|(reason, detail)| RendezvousResponse::Refused(Refusal { reason, detail })),
        proptest::collection::vec(any_peer_record(), 0..3).prop_map(RendezvousResponse::Discovered),
        proptest::collection::vec((any_user(), any_device_list()), 0..3).prop_map(|lists| {
            RendezvousResponse::Devices(
                lists
                    .into_iter()
                    .map(|(name, list)| AccountDevices { name, list })
                    .collect(),
            )
        }),
        proptest::option::of(any_bytes())
            .prop_map(|sealed| RendezvousResponse::Link(sealed.map(SealedLink))),
    ]
}

pub fn any_server_push() -> impl Strategy<Value = ServerPush> {
    prop_oneof![
        any_presence().prop_map(ServerPush::Presence),
        any::<u32>().prop_map(|count| ServerPush::MailWaiting { count }),
        any::<u32>().prop_map(|remaining| ServerPush::PrekeysLow { remaining }),
        any_user().prop_map(|name| ServerPush::DevicesChanged { name }),
    ]
}

pub fn any_peer_request() -> impl Strategy<Value = PeerRequest> {
    prop_oneof![
        any_envelope().prop_map(|e| PeerRequest::Deliver(Box::new(e))),
        (
            any::<[u8; 32]>(),
            proptest::collection::vec((any_key(), any::<u64>()), 0..4),
            any::<u16>()
        )
            .prop_map(|(room, cursors, max)| PeerRequest::GapFill(GapFillRequest {
                room: RoomId(room),
                cursors: cursors
                    .into_iter()
                    .map(|(sender, have_through)| SenderCursor {
                        sender,
                        have_through
                    })
                    .collect(),
                max,
            })),
    ]
}

pub fn any_peer_response() -> impl Strategy<Value = PeerResponse> {
    prop_oneof![
        any_message_id().prop_map(|id| PeerResponse::Stored { id }),
        ".{0,40}".prop_map(|reason| PeerResponse::Rejected { reason }),
        (
            proptest::collection::vec(any_envelope(), 0..3),
            any::<bool>()
        )
            .prop_map(|(envelopes, more)| PeerResponse::GapFill(GapFillResponse {
                envelopes,
                more
            })),
    ]
}
