#!/usr/bin/env python3
"""Known answers of chat-core's crypto tests, computed apart from the Rust code.

Builds each record from the byte format documented in chat-core/src/crypto.rs
with the `cryptography` package (AESGCM, HKDF-SHA256) and prints it as hex;
tests.rs pins these values. Run: python3 known_answers.py
"""
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives import hashes
import base64
import struct

def hkdf(ikm, info, n):
    return HKDF(algorithm=hashes.SHA256(), length=n, salt=None, info=info).derive(ikm)

def lp(s): b=s.encode(); return struct.pack('>Q', len(b)) + b

chat = bytes(range(0x01, 0x11))
msg  = bytes(range(0x11, 0x21))
sender = "alice"
epoch = 7
nonce = bytes(range(0xa0, 0xac))
dk = bytes(range(0x00, 0x20))
uk = bytes(range(0x20, 0x40))
mk = bytes(range(0x40, 0x60))

# sealed body
hdr = bytes([1, 3]) + struct.pack('>I', epoch)
aad = hdr + b"chat-engine sealed v1" + bytes([1]) + chat + msg + lp(sender)
sealed = hdr + nonce + AESGCM(dk).encrypt(nonce, b"hello, world", aad)
print("sealed", sealed.hex())

# user key id / wrapped data key
uid = hkdf(uk, b"chat-engine user-key id v1", 8)
uwrap = hkdf(uk, b"chat-engine user-key wrap v1", 32)
print("user id", uid.hex())
hdr = bytes([1, 2]) + uid
aad = hdr + b"chat-engine data-key v1" + chat + lp(sender) + struct.pack('>I', epoch)
wdk = hdr + nonce + AESGCM(uwrap).encrypt(nonce, dk, aad)
print("wrapped data key", wdk.hex(), len(wdk))

# master key id / wrapped user key
mid = hkdf(mk, b"chat-engine master-key id v1", 8)
mwrap = hkdf(mk, b"chat-engine master-key wrap v1", 32)
print("master id", mid.hex())
hdr = bytes([1, 1]) + mid
aad = hdr + b"chat-engine user-key v1" + lp(sender)
wuk = hdr + nonce + AESGCM(mwrap).encrypt(nonce, uk, aad)
print("wrapped user key", wuk.hex(), len(wuk))

# GCM spec test case 16 sanity
K=bytes.fromhex("feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308")
IV=bytes.fromhex("cafebabefacedbaddecaf888")
P=bytes.fromhex("d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a721c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39")
A=bytes.fromhex("feedfacedeadbeeffeedfacedeadbeefabaddad2")
print("tc16", AESGCM(K).encrypt(IV,P,A).hex())
print("master key base64", base64.b64encode(mk).decode())
