# Runtime checks of the segway hardening: root cannot log in, the sysctls are in force and
# the root file system is mounted read-only from dm-verity.
import re

from oeqa.runtime.case import OERuntimeTestCase
from oeqa.core.decorator.depends import OETestDepends
from oeqa.runtime.decorator.package import OEHasPackage

# Values from recipes-security/segway-hardening/files/90-segway.conf that matter most.
EXPECTED_SYSCTLS = {
    'kernel.kptr_restrict': '2',
    'kernel.dmesg_restrict': '1',
    'kernel.yama.ptrace_scope': '2',
    'kernel.unprivileged_bpf_disabled': '1',
    'kernel.kexec_load_disabled': '1',
    'kernel.sysrq': '0',
    'fs.protected_symlinks': '1',
    'fs.protected_hardlinks': '1',
    'fs.suid_dumpable': '0',
    'net.ipv4.conf.all.rp_filter': '1',
    'net.ipv4.conf.all.accept_redirects': '0',
    'net.core.bpf_jit_harden': '2',
}


class SegwayHardeningTest(OERuntimeTestCase):

    def test_root_account_locked(self):
        status, output = self.target.run('grep "^root:" /etc/shadow')
        self.assertEqual(status, 0, msg=output)
        password = output.split(':')[1]
        self.assertTrue(password.startswith('!') or password in ('*', '!'),
                        msg='root has a usable password entry: %r' % password[:2])

    @OEHasPackage(['openssh-sshd'])
    def test_sshd_policy(self):
        status, output = self.target.run('sshd -T 2>/dev/null')
        self.assertEqual(status, 0, msg='sshd -T failed: %s' % output)
        effective = dict(line.split(' ', 1) for line in output.splitlines() if ' ' in line)
        status, _ = self.target.run('test -e /etc/segway-test-image')
        # Test images let the runner's key in as root (segway-test-access); never a password.
        allowed = ('no', 'without-password', 'prohibit-password') if status == 0 else ('no',)
        self.assertIn(effective.get('permitrootlogin'), allowed)
        self.assertEqual(effective.get('passwordauthentication'), 'no')
        self.assertEqual(effective.get('kbdinteractiveauthentication'), 'no')
        self.assertEqual(effective.get('permitemptypasswords'), 'no')

    @OEHasPackage(['segway-hardening'])
    def test_sysctls_in_force(self):
        wrong = {}
        for key, want in EXPECTED_SYSCTLS.items():
            status, output = self.target.run('sysctl -n %s' % key)
            if status != 0 or output.strip() != want:
                wrong[key] = output.strip()
        self.assertEqual(wrong, {}, msg='sysctls not in force: %s' % wrong)

    def test_root_read_only_from_verity(self):
        status, output = self.target.run('cat /proc/self/mounts')
        self.assertEqual(status, 0, msg=output)
        root = [line.split() for line in output.splitlines() if line.split()[1:2] == ['/']]
        self.assertTrue(root, msg='no / mount: %s' % output)
        device, _, _, options = root[-1][:4]
        self.assertIn('ro', options.split(','), msg='/ is not read-only: %s' % options)
        self.assertIn(device, ('/dev/mapper/rootfs', '/dev/dm-0'), msg='/ is not the verity device: %s' % device)
        status, output = self.target.run('dmsetup table rootfs 2>/dev/null || cat /sys/block/dm-0/dm/name')
        self.assertEqual(status, 0, msg=output)
        self.assertTrue(re.search(r'\bverity\b', output) or output.strip() == 'rootfs', msg=output)
        status, output = self.target.run('touch /segway-oeqa-write-test')
        self.assertNotEqual(status, 0, msg='the root file system accepted a write')
