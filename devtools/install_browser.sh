#!/bin/sh
# The browser the merchant-page test (tests/e2e/test_browser.py) drives through Playwright:
# Debian's chromium at /usr/bin/chromium (Playwright's own browser downloads are never used),
# and a small CJK font so the screenshots show the pages' Chinese (not boxes).
# Installs it with apt-get when it is missing and apt is usable (root, or sudo without a
# password); otherwise, or if the install fails, says so and exits 0: the test then skips.
set -u

CHROMIUM=${CHROMIUM:-/usr/bin/chromium}
[ -x "$CHROMIUM" ] && exit 0

if ! command -v apt-get >/dev/null 2>&1; then
	echo "install_browser: no apt-get here; the browser test will skip (no $CHROMIUM)" >&2
	exit 0
fi
if [ "$(id -u)" -eq 0 ]; then
	SUDO=
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
	SUDO="sudo -n"
else
	echo "install_browser: apt-get needs root; the browser test will skip (no $CHROMIUM)" >&2
	exit 0
fi

echo "install_browser: installing Debian's chromium (apt-get)..." >&2
export DEBIAN_FRONTEND=noninteractive
APT_OPTS="-qq -y --no-install-recommends -o Dpkg::Use-Pty=0"
# shellcheck disable=SC2086  # word splitting of the options is intended
apt_install() {
	$SUDO apt-get install $APT_OPTS chromium fonts-wqy-microhei >/dev/null 2>&1 \
		|| $SUDO apt-get install $APT_OPTS chromium >/dev/null 2>&1
}
apt_update() { $SUDO apt-get -qq update >/dev/null 2>&1; }
# The package lists first when the cached ones do not know chromium (a fresh machine has none);
# lists that know it but are stale (a version gone from the mirror) are renewed on failure.
if ! apt-cache show chromium >/dev/null 2>&1; then
	apt_update
	apt_install
else
	apt_install || { apt_update && apt_install; }
fi
if [ -x "$CHROMIUM" ]; then
	echo "install_browser: $("$CHROMIUM" --version 2>/dev/null || echo chromium) installed" >&2
else
	echo "install_browser: chromium could not be installed; the browser test will skip" >&2
fi
exit 0
