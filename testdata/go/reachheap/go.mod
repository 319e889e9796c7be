module fixture/reachheap

go 1.21
