module fixture/fanout

go 1.21
