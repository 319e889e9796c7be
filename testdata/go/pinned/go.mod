module fixture/pinned

go 1.21
