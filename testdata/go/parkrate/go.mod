module fixture/parkrate

go 1.21
