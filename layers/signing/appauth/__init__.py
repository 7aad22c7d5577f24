"""The signing layer, on two floors.

- ``appauth.alipay``: the Alipay protocol (keys, v2/v3 signing, AES, credentials, the OpenAPI
  client, token models, protocol errors). No AWS; usable alone by an ISV's own Lambdas.
- ``appauth``: the token service above it (store, envelope encryption, the lifecycle, refresh,
  look-ups, notifications, parking, configuration, secrets, runtime wiring).
"""
