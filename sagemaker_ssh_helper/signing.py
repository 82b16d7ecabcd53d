"""Verify what ``sm-local-configure`` downloads before it installs it (as root).

AWS signs the Session Manager plugin's Linux packages (``.deb``/``.rpm``, from version
1.2.707.0) and the AWS CLI v2 installers with PGP keys it publishes in its documentation; both
keys are embedded below, with the fingerprints the documentation gives. A download is
installed only when ``gpg --verify`` reports a valid signature (``VALIDSIG``) by the key with
that fingerprint; anything else, including a missing ``gpg``, stops the installation.

``SM_SSH_SIGNING_KEY`` names an armored public key file to trust instead (a mirror that
re-signs the packages with its own key; tests use a throwaway key).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from sagemaker_ssh_helper.errors import SSHHelperError

PLUGIN_GUIDE = ("https://docs.aws.amazon.com/systems-manager/latest/userguide/"
                "install-plugin-linux-verify-signature.html")
AWSCLI_GUIDE = ("https://docs.aws.amazon.com/cli/latest/userguide/"
                "getting-started-install.html")


@dataclass(frozen=True)
class SigningKey:
    name: str
    fingerprint: str  # the primary key's, as AWS documents it (spaces removed)
    armored: str
    guide: str


# "AWS SSM Session Manager <session-manager-plugin-signer@amazon.com>", from the Session
# Manager plugin's signature verification guide.
SESSION_MANAGER_PLUGIN = SigningKey(
    "the Session Manager plugin", "7959637124CE093AD501D47A2C4D4AFF6F6757EE", """\
-----BEGIN PGP PUBLIC KEY BLOCK-----

mFIEZ5ERQxMIKoZIzj0DAQcCAwQjuZy+IjFoYg57sLTGhF3aZLBaGpzB+gY6j7Ix
P7NqbpXyjVj8a+dy79gSd64OEaMxUb7vw/jug+CfRXwVGRMNtIBBV1MgU1NNIFNl
c3Npb24gTWFuYWdlciA8c2Vzc2lvbi1tYW5hZ2VyLXBsdWdpbi1zaWduZXJAYW1h
em9uLmNvbT4gKEFXUyBTeXN0ZW1zIE1hbmFnZXIgU2Vzc2lvbiBNYW5hZ2VyIFBs
dWdpbiBMaW51eCBTaWduZXIgS2V5KYkBAAQQEwgAqAUCZ5ERQ4EcQVdTIFNTTSBT
ZXNzaW9uIE1hbmFnZXIgPHNlc3Npb24tbWFuYWdlci1wbHVnaW4tc2lnbmVyQGFt
YXpvbi5jb20+IChBV1MgU3lzdGVtcyBNYW5hZ2VyIFNlc3Npb24gTWFuYWdlciBQ
bHVnaW4gTGludXggU2lnbmVyIEtleSkWIQR5WWNxJM4JOtUB1HosTUr/b2dX7gIe
AwIbAwIVCAAKCRAsTUr/b2dX7rO1AQCa1kig3lQ78W/QHGU76uHx3XAyv0tfpE9U
oQBCIwFLSgEA3PDHt3lZ+s6m9JLGJsy+Cp5ZFzpiF6RgluR/2gA861M=
=2DQm
-----END PGP PUBLIC KEY BLOCK-----
""",
    PLUGIN_GUIDE)

# "AWS CLI Team <aws-cli@amazon.com>", from the AWS CLI v2 installation guide. AWS extends
# this key's expiry from time to time under the same fingerprint; an expired copy still
# verifies signatures (VALIDSIG), which is what is checked.
AWS_CLI = SigningKey(
    "the AWS CLI v2", "FB5DB77FD5C118B80511ADA8A6310ACC4672475C", """\
-----BEGIN PGP PUBLIC KEY BLOCK-----

mQINBF2Cr7UBEADJZHcgusOJl7ENSyumXh85z0TRV0xJorM2B/JL0kHOyigQluUG
ZMLhENaG0bYatdrKP+3H91lvK050pXwnO/R7fB/FSTouki4ciIx5OuLlnJZIxSzx
PqGl0mkxImLNbGWoi6Lto0LYxqHN2iQtzlwTVmq9733zd3XfcXrZ3+LblHAgEt5G
TfNxEKJ8soPLyWmwDH6HWCnjZ/aIQRBTIQ05uVeEoYxSh6wOai7ss/KveoSNBbYz
gbdzoqI2Y8cgH2nbfgp3DSasaLZEdCSsIsK1u05CinE7k2qZ7KgKAUIcT/cR/grk
C6VwsnDU0OUCideXcQ8WeHutqvgZH1JgKDbznoIzeQHJD238GEu+eKhRHcz8/jeG
94zkcgJOz3KbZGYMiTh277Fvj9zzvZsbMBCedV1BTg3TqgvdX4bdkhf5cH+7NtWO
lrFj6UwAsGukBTAOxC0l/dnSmZhJ7Z1KmEWilro/gOrjtOxqRQutlIqG22TaqoPG
fYVN+en3Zwbt97kcgZDwqbuykNt64oZWc4XKCa3mprEGC3IbJTBFqglXmZ7l9ywG
EEUJYOlb2XrSuPWml39beWdKM8kzr1OjnlOm6+lpTRCBfo0wa9F8YZRhHPAkwKkX
XDeOGpWRj4ohOx0d2GWkyV5xyN14p2tQOCdOODmz80yUTgRpPVQUtOEhXQARAQAB
tCFBV1MgQ0xJIFRlYW0gPGF3cy1jbGlAYW1hem9uLmNvbT6JAlQEEwEIAD4WIQT7
Xbd/1cEYuAURraimMQrMRnJHXAUCXYKvtQIbAwUJB4TOAAULCQgHAgYVCgkICwIE
FgIDAQIeAQIXgAAKCRCmMQrMRnJHXJIXEAChLUIkg80uPUkGjE3jejvQSA1aWuAM
yzy6fdpdlRUz6M6nmsUhOExjVIvibEJpzK5mhuSZ4lb0vJ2ZUPgCv4zs2nBd7BGJ
MxKiWgBReGvTdqZ0SzyYH4PYCJSE732x/Fw9hfnh1dMTXNcrQXzwOmmFNNegG0Ox
au+VnpcR5Kz3smiTrIwZbRudo1ijhCYPQ7t5CMp9kjC6bObvy1hSIg2xNbMAN/Do
ikebAl36uA6Y/Uczjj3GxZW4ZWeFirMidKbtqvUz2y0UFszobjiBSqZZHCreC34B
hw9bFNpuWC/0SrXgohdsc6vK50pDGdV5kM2qo9tMQ/izsAwTh/d/GzZv8H4lV9eO
tEis+EpR497PaxKKh9tJf0N6Q1YLRHof5xePZtOIlS3gfvsH5hXA3HJ9yIxb8T0H
QYmVr3aIUes20i6meI3fuV36VFupwfrTKaL7VXnsrK2fq5cRvyJLNzXucg0WAjPF
RrAGLzY7nP1xeg1a0aeP+pdsqjqlPJom8OCWc1+6DWbg0jsC74WoesAqgBItODMB
rsal1y/q+bPzpsnWjzHV8+1/EtZmSc8ZUGSJOPkfC7hObnfkl18h+1QtKTjZme4d
H17gsBJr+opwJw/Zio2LMjQBOqlm3K1A4zFTh7wBC7He6KPQea1p2XAMgtvATtNe
YLZATHZKTJyiqA==
=vYOk
-----END PGP PUBLIC KEY BLOCK-----
""", AWSCLI_GUIDE)


class SignatureError(SSHHelperError):
    exit_code = 1


def _gpg() -> str:
    gpg = shutil.which("gpg")
    if gpg is None:
        raise SignatureError("gpg not found: it verifies AWS's signature before anything is "
                             "installed (apt-get install gnupg, or brew install gnupg)")
    return gpg


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False,
                          stdin=subprocess.DEVNULL)


def _trusted(key: SigningKey, gpg: str, home: str) -> list[str]:
    """Import the key to trust (``SM_SSH_SIGNING_KEY``, else ``key``); its fingerprints."""
    override = os.environ.get("SM_SSH_SIGNING_KEY")
    key_file = Path(home) / "trusted.asc"
    key_file.write_text(Path(override).read_text() if override else key.armored)
    _run([gpg, "--homedir", home, "--batch", "--import", str(key_file)])
    listed = _run([gpg, "--homedir", home, "--batch", "--with-colons", "--list-keys"])
    found = [line.split(":")[9] for line in listed.stdout.splitlines()
             if line.startswith("fpr:")]
    return found if override else [f for f in found if f == key.fingerprint]


def verify(file: Path, signature: Path, key: SigningKey) -> str:
    """Check ``signature`` (detached, binary or armored) of ``file``; return the signing key's
    fingerprint, or raise ``SignatureError``."""
    gpg = _gpg()
    with tempfile.TemporaryDirectory(prefix="sm-ssh-gpg-") as home:
        os.chmod(home, 0o700)
        trusted = _trusted(key, gpg, home)
        done = _run([gpg, "--homedir", home, "--batch", "--status-fd", "1", "--verify",
                     str(signature), str(file)])
    signers = {field for line in done.stdout.splitlines()
               if line.startswith("[GNUPG:] VALIDSIG ") for field in line.split()[2:]}
    for fingerprint in trusted:
        if fingerprint in signers:
            return fingerprint
    raise SignatureError(f"{file.name} is not signed by AWS's key for {key.name} "
                         f"({key.fingerprint}): not installing it; see {key.guide}")
