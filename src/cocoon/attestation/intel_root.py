"""The pinned Intel SGX Root CA: the trust anchor of every real TDX quote's PCK chain.

It anchors Intel's collateral as well: the TCB signing certificate that signs TCB info and
QE identities, the PCK CRL issuer chain, and the root CA CRL are all checked up to this root
(see :mod:`cocoon.attestation.collateral`).

Taken verbatim from the root certificate at the end of the PCK chain of a real TDX quote
(``shared/testdata/tdx-quote-v4.dat``). Subject ``CN=Intel SGX Root CA, O=Intel Corporation``;
SHA-256 fingerprint (DER)
``44a0196b2b99f889b8e149e95b807a350e7424964399e885a7cbb8ccfab674d3``.
A chain verifies only if its root is byte-identical to this certificate.
"""

from __future__ import annotations

from typing import Final

__all__ = ["INTEL_SGX_ROOT_CA_FINGERPRINT_SHA256", "INTEL_SGX_ROOT_CA_PEM"]

INTEL_SGX_ROOT_CA_FINGERPRINT_SHA256: Final = (
    "44a0196b2b99f889b8e149e95b807a350e7424964399e885a7cbb8ccfab674d3"
)

INTEL_SGX_ROOT_CA_PEM: Final = b"""\
-----BEGIN CERTIFICATE-----
MIICjzCCAjSgAwIBAgIUImUM1lqdNInzg7SVUr9QGzknBqwwCgYIKoZIzj0EAwIw
aDEaMBgGA1UEAwwRSW50ZWwgU0dYIFJvb3QgQ0ExGjAYBgNVBAoMEUludGVsIENv
cnBvcmF0aW9uMRQwEgYDVQQHDAtTYW50YSBDbGFyYTELMAkGA1UECAwCQ0ExCzAJ
BgNVBAYTAlVTMB4XDTE4MDUyMTEwNDUxMFoXDTQ5MTIzMTIzNTk1OVowaDEaMBgG
A1UEAwwRSW50ZWwgU0dYIFJvb3QgQ0ExGjAYBgNVBAoMEUludGVsIENvcnBvcmF0
aW9uMRQwEgYDVQQHDAtTYW50YSBDbGFyYTELMAkGA1UECAwCQ0ExCzAJBgNVBAYT
AlVTMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEC6nEwMDIYZOj/iPWsCzaEKi7
1OiOSLRFhWGjbnBVJfVnkY4u3IjkDYYL0MxO4mqsyYjlBalTVYxFP2sJBK5zlKOB
uzCBuDAfBgNVHSMEGDAWgBQiZQzWWp00ifODtJVSv1AbOScGrDBSBgNVHR8ESzBJ
MEegRaBDhkFodHRwczovL2NlcnRpZmljYXRlcy50cnVzdGVkc2VydmljZXMuaW50
ZWwuY29tL0ludGVsU0dYUm9vdENBLmRlcjAdBgNVHQ4EFgQUImUM1lqdNInzg7SV
Ur9QGzknBqwwDgYDVR0PAQH/BAQDAgEGMBIGA1UdEwEB/wQIMAYBAf8CAQEwCgYI
KoZIzj0EAwIDSQAwRgIhAOW/5QkR+S9CiSDcNoowLuPRLsWGf/Yi7GSX94BgwTwg
AiEA4J0lrHoMs+Xo5o/sX6O9QWxHRAvZUGOdRQ7cvqRXaqI=
-----END CERTIFICATE-----
"""
