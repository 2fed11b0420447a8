package client_test

import "syscall"

// dieWithParent kills the child if the test binary dies without cleaning up (e.g. on
// a -timeout panic), so no redis-server or cachet server outlives the test.
func dieWithParent() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
