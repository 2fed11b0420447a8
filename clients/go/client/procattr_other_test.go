//go:build !linux

package client_test

import "syscall"

func dieWithParent() *syscall.SysProcAttr { return nil }
