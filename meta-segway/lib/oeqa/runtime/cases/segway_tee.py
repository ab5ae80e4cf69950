# Runtime checks of the TEE side of a segway image: tee-supplicant, the fTPM and its TPM 2.0
# interface.
import time

from oeqa.runtime.case import OERuntimeTestCase
from oeqa.core.decorator.depends import OETestDepends
from oeqa.runtime.decorator.package import OEHasPackage


class SegwayTeeTest(OERuntimeTestCase):

    @OEHasPackage(['optee-client'])
    def test_tee_supplicant_running(self):
        status, output = self.target.run('systemctl is-active tee-supplicant@teepriv0.service')
        self.assertEqual(status, 0, msg='tee-supplicant is not active: %s' % output)
        status, output = self.target.run('pidof tee-supplicant')
        self.assertEqual(status, 0, msg='no tee-supplicant process')

    @OETestDepends(['segway_tee.SegwayTeeTest.test_tee_supplicant_running'])
    def test_tpmrm0_present(self):
        # The fTPM answers only once tee-supplicant serves its storage; allow it to come up.
        deadline = time.time() + 60
        while True:
            status, _ = self.target.run('test -c /dev/tpmrm0')
            if status == 0 or time.time() > deadline:
                break
            time.sleep(2)
        self.assertEqual(status, 0, msg='/dev/tpmrm0 did not appear within 60 s')
        status, output = self.target.run('cat /sys/class/tpm/tpm0/tpm_version_major')
        self.assertEqual((status, output.strip()), (0, '2'), msg='not a TPM 2.0: %s' % output)

    @OETestDepends(['segway_tee.SegwayTeeTest.test_tpmrm0_present'])
    @OEHasPackage(['tpm2-tools'])
    def test_tpm2_getrandom(self):
        status, first = self.target.run('tpm2_getrandom -T device:/dev/tpmrm0 --hex 16')
        self.assertEqual(status, 0, msg='tpm2_getrandom failed: %s' % first)
        status, second = self.target.run('tpm2_getrandom -T device:/dev/tpmrm0 --hex 16')
        self.assertEqual(status, 0, msg='tpm2_getrandom failed: %s' % second)
        for value in (first.strip(), second.strip()):
            self.assertRegex(value, r'^[0-9a-f]{32}$')
        self.assertNotEqual(first.strip(), second.strip(), msg='the TPM returned the same random bytes twice')
