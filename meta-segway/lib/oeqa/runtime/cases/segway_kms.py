# Runtime checks of segway-kms on the device: the service is up and healthy, and a key it
# creates in the TPM signs data that verifies with the public key it returns.
from oeqa.runtime.case import OERuntimeTestCase
from oeqa.core.decorator.depends import OETestDepends
from oeqa.runtime.decorator.package import OEHasPackage


# Root reaches the admin socket (principal group:segway-kms-admin in kms/conf/segway-kms.yaml).
CTL = 'segway-kmsctl --socket /run/segway-kms/admin.sock'


class SegwayKmsTest(OERuntimeTestCase):

    @OEHasPackage(['segway-kms'])
    def test_kms_health(self):
        status, output = self.target.run('systemctl is-active segway-kmsd.service')
        self.assertEqual(status, 0, msg='segway-kmsd is not active: %s' % output)
        status, output = self.target.run('%s health' % CTL, timeout=120)
        self.assertEqual((status, output.strip()), (0, 'SERVING'), msg='health check failed: %s' % output)

    @OETestDepends(['segway_kms.SegwayKmsTest.test_kms_health'])
    def test_kms_sign_round_trip(self):
        run = lambda cmd: self.target.run(cmd, timeout=180)
        status, output = run('%s key generate oeqa/roundtrip --algorithm EC_P256 --usage sign' % CTL)
        self.assertEqual(status, 0, msg='key generate failed: %s' % output)
        # segway-kmsctl never overwrites an output: clear what an interrupted run may have left.
        status, output = run('rm -f /tmp/oeqa-msg.sig /tmp/oeqa-key.pem && printf segway-oeqa > /tmp/oeqa-msg && '
                             '%s key sign oeqa/roundtrip --input /tmp/oeqa-msg -o /tmp/oeqa-msg.sig && '
                             '%s key public oeqa/roundtrip -o /tmp/oeqa-key.pem' % (CTL, CTL))
        self.assertEqual(status, 0, msg='sign failed: %s' % output)
        # Verify with OpenSSL, not with the service that made the signature.
        status, output = run('openssl dgst -sha256 -verify /tmp/oeqa-key.pem -signature /tmp/oeqa-msg.sig /tmp/oeqa-msg')
        self.assertEqual(status, 0, msg='signature does not verify: %s' % output)
        status, output = run('printf tampered > /tmp/oeqa-msg && '
                             'openssl dgst -sha256 -verify /tmp/oeqa-key.pem -signature /tmp/oeqa-msg.sig /tmp/oeqa-msg')
        self.assertNotEqual(status, 0, msg='a signature over other data verified')
        run('%s key destroy oeqa/roundtrip; rm -f /tmp/oeqa-msg /tmp/oeqa-msg.sig /tmp/oeqa-key.pem' % CTL)
