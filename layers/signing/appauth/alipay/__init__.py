"""The Alipay protocol floor: keys and certificates, v2/v3 signing and verification, AES, the
OpenAPI client, token models and protocol errors.

Nothing here touches AWS: an ISV's own Lambdas can use this subpackage alone to call Alipay for
a merchant (``from appauth.alipay.client import AlipayClient``). The token service (store,
lifecycle, refresh, look-ups) lives one floor up, in ``appauth``.
"""
