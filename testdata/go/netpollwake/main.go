// netpollwake has one goroutine blocked reading a TCP connection on 127.0.0.1 (wait reason
// "IO wait"). When data arrives, the network poller makes it runnable without calling
// runtime.ready (netpoll -> injectglist), which is the wake-up only the wake-any probe
// (runtime.casgstatus) sees.
//
// It prints "listening on ADDR" on stderr, then "reader goid N" when the reader blocks, and
// "got N bytes" each time data arrives; it exits when the connection closes.
package main

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"runtime"
	"strconv"
)

func goid() uint64 {
	buf := make([]byte, 64)
	buf = buf[:runtime.Stack(buf, false)]
	id, _ := strconv.ParseUint(string(bytes.Fields(buf)[1]), 10, 64)
	return id
}

//go:noinline
func reader(c net.Conn, done chan<- struct{}) {
	fmt.Fprintf(os.Stderr, "reader goid %d\n", goid())
	buf := make([]byte, 64)
	for {
		n, err := c.Read(buf)
		if err != nil {
			close(done)
			return
		}
		fmt.Fprintf(os.Stderr, "got %d bytes\n", n)
	}
}

func main() {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	fmt.Fprintf(os.Stderr, "listening on %s\n", ln.Addr())
	c, err := ln.Accept()
	if err != nil {
		panic(err)
	}
	done := make(chan struct{})
	go reader(c, done)
	<-done
}
