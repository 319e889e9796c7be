module fixture/pingpong

go 1.21
